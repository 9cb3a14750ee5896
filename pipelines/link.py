"""Batch linking on Ray Data: mentions JSONL in, results JSONL out.

Each actor of the pool loads the graph's steps once (:class:`serve.linking.LocalGraph`: the retrieve, select and
finish code the Serve deployments run), so batch and online answers for the same mention agree. The output file
appears only when every mention is linked.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mel.config import Config
from mel.types import LinkResult, Mention

log = logging.getLogger("mel.link")


def _write_results_atomic(results: list[dict[str, Any]], out_path: str) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mention_from_row(row: dict[str, Any]) -> Mention:
    attrs = row.get("attributes_json")
    return Mention(id=str(row["id"]), surface=row["surface"], context=row.get("context") or "",
                   image=row.get("image") or None, attributes=json.loads(attrs) if attrs else {},
                   gold=row.get("gold") or None)


def _row_from_mention(m: Mention) -> dict[str, Any]:
    return {"id": m.id, "surface": m.surface, "context": m.context, "image": m.image or "",
            "attributes_json": json.dumps(m.attributes), "gold": m.gold or ""}


class LinkerActor:
    """Ray Data callable class: loads the graph's steps once per actor, links a batch per call."""

    def __init__(self, cfg: dict[str, Any], index_dir: str, method: str | None) -> None:
        from mel import compat

        compat.prepare()
        from serve.linking import LocalGraph

        self.linker = LocalGraph.load(Config.model_validate(cfg), index_dir, method=method)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["id"])
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        results = self.linker.link([_mention_from_row(r) for r in rows])
        return {"result_json": [json.dumps(r.to_dict(), ensure_ascii=False) for r in results],
                "order": [int(x) for x in batch["order"]]}


def run_link(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *, method: str | None = None) -> int:
    import ray

    from mel.mentions import read_mentions
    from serve.linking import check_graph_method

    check_graph_method(method or cfg.method)
    mentions = read_mentions(mentions_path)
    rows = [dict(_row_from_mention(m), order=i) for i, m in enumerate(mentions)]
    if not rows:
        _write_results_atomic([], out_path)
        return 0
    t0 = time.perf_counter()
    p = cfg.pipelines.link
    ds = ray.data.from_items(rows).map_batches(
        LinkerActor, fn_constructor_args=(cfg.model_dump(mode="json"), index_dir, method),
        batch_size=p.batch_size, compute=ray.data.ActorPoolStrategy(size=p.workers), num_cpus=1)
    out = sorted(ds.take_all(), key=lambda r: r["order"])
    if len(out) != len(rows):
        raise RuntimeError(f"batch linking returned {len(out)} results for {len(rows)} mentions")
    _write_results_atomic([json.loads(r["result_json"]) for r in out], out_path)
    log.info("linked %d mentions in %.1fs", len(rows), time.perf_counter() - t0)
    return len(rows)


def run_link_local(cfg: Config, index_dir: str, mentions_path: str, out_path: str, *,
                   method: str | None = None, linker: Any = None) -> int:
    """Single-process batch linking with the graph's steps (``linker``: anything with ``link(mentions)``, e.g. a
    ready :class:`serve.linking.LocalGraph`)."""
    from mel.mentions import read_mentions
    from serve.linking import LocalGraph

    mentions = read_mentions(mentions_path)
    own = linker is None
    linker = linker or LocalGraph.load(cfg, index_dir, method=method)
    try:
        results: list[LinkResult] = []
        for i in range(0, len(mentions), cfg.pipelines.link.batch_size):
            results.extend(linker.link(mentions[i:i + cfg.pipelines.link.batch_size]))
    finally:
        if own:
            linker.shutdown()  # the LLM engine, when selection ran
    _write_results_atomic([r.to_dict() for r in results], out_path)
    return len(results)
