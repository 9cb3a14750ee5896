"""Batch linking on Ray Data: mentions JSONL in, results JSONL out.

Each actor of the pool builds the method's runner once (:class:`mel.runner.Runner`: the declared steps the Serve
deployments run too), so batch and online answers for the same mention agree. The output file
appears only when every mention is linked.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from mel.atomic import write_jsonl_atomic
from mel.config import Config
from mel.types import LinkResult, Mention

log = logging.getLogger("mel.link")


def _mention_from_row(row: dict[str, Any]) -> Mention:
    attrs = row.get("attributes_json")
    return Mention(id=str(row["id"]), surface=row["surface"], context=row.get("context") or "",
                   image=row.get("image") or None, attributes=json.loads(attrs) if attrs else {},
                   gold=row.get("gold") or None)


def _row_from_mention(m: Mention) -> dict[str, Any]:
    return {"id": m.id, "surface": m.surface, "context": m.context, "image": m.image or "",
            "attributes_json": json.dumps(m.attributes), "gold": m.gold or ""}


class LinkerActor:
    """Ray Data callable class: builds the method's runner once per actor, links a batch per call."""

    def __init__(self, cfg: dict[str, Any], index_dir: str, method: str | None) -> None:
        from mel import compat

        compat.prepare()
        from mel.runner import Runner

        self.linker = Runner.load(Config.model_validate(cfg), index_dir, method=method)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["id"])
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        results = self.linker.link([_mention_from_row(r) for r in rows])
        return {"result_json": [json.dumps(r.to_dict(), ensure_ascii=False) for r in results],
                "order": [int(x) for x in batch["order"]]}


def run_link(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *, method: str | None = None) -> int:
    import ray

    from mel.mentions import read_mentions
    from mel.methods import registry

    registry.check_name(method or cfg.method)
    mentions = read_mentions(mentions_path)
    rows = [dict(_row_from_mention(m), order=i) for i, m in enumerate(mentions)]
    if not rows:
        write_jsonl_atomic(out_path, [])
        return 0
    t0 = time.perf_counter()
    p = cfg.pipelines.link
    ds = ray.data.from_items(rows).map_batches(
        LinkerActor, fn_constructor_args=(cfg.model_dump(mode="json"), index_dir, method),
        batch_size=p.batch_size, compute=ray.data.ActorPoolStrategy(size=p.workers), num_cpus=1)
    out = sorted(ds.take_all(), key=lambda r: r["order"])
    if len(out) != len(rows):
        raise RuntimeError(f"batch linking returned {len(out)} results for {len(rows)} mentions")
    write_jsonl_atomic(out_path, [json.loads(r["result_json"]) for r in out])
    log.info("linked %d mentions in %.1fs", len(rows), time.perf_counter() - t0)
    return len(rows)


def run_link_local(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *,
                   method: str | None = None, linker: Any = None) -> int:
    """Single-process batch linking with the graph's steps (``linker``: anything with ``link(mentions)``, e.g. a
    ready :class:`mel.runner.Runner`)."""
    from mel.mentions import read_mentions
    from mel.runner import Runner

    mentions = read_mentions(mentions_path)
    own = linker is None
    linker = linker or Runner.load(cfg, index_dir, method=method)
    try:
        results: list[LinkResult] = []
        for i in range(0, len(mentions), cfg.pipelines.link.batch_size):
            results.extend(linker.link(mentions[i:i + cfg.pipelines.link.batch_size]))
    finally:
        if own:
            linker.shutdown()  # the LLM engine, when selection ran
    write_jsonl_atomic(out_path, [r.to_dict() for r in results])
    return len(results)
