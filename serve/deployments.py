"""Model-bearing deployments of the linking graph. Plain classes here; ``serve.app`` turns them into
Serve deployments with resources, autoscaling and batching from config."""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from mel.config import Config
from mel.types import Candidate, Mention


class RetrieverDeployment:
    """Text (and image) encoder + faiss index. Requests from many callers are batched together."""

    def __init__(self, cfg: dict[str, Any], index_dir: str) -> None:
        from mel import compat

        compat.prepare()
        from mel.methods.base import load_components
        from mel.stages.retrieve import Retriever

        self.cfg = Config.model_validate(cfg)
        parts = load_components(self.cfg, index_dir, need_llm=False)
        self.index = parts.index
        self.retriever = Retriever(parts.index, parts.text_encoder, self.cfg.retrieval, parts.image_encoder)
        self.retrieve_batch.set_max_batch_size(self.cfg.serve.retriever.max_batch_size)
        self.retrieve_batch.set_batch_wait_timeout_s(self.cfg.serve.retriever.batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        m = self.index.manifest
        return {"entities": len(self.index), "encoder_id": m.encoder_id, "kb_hash": m.kb_hash,
                "factory": m.factory, "image_encoder_id": m.image_encoder_id}

    async def retrieve(self, mention: Mention, image: Any, k: int) -> tuple[list[Candidate], dict[str, str], float]:
        """One mention in; batched across callers by ``retrieve_batch``. Returns candidates, the texts of
        the head candidates (for the selector), and the batch's time per mention in ms."""
        return await self.retrieve_batch((mention, image, k))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def retrieve_batch(self, items: list[tuple[Mention, Any, int]]) -> list[Any]:
        t0 = time.perf_counter()
        k = max(it[2] for it in items)
        cands = self.retriever.retrieve([it[0] for it in items], [it[1] for it in items], k=k)
        per = 1000 * (time.perf_counter() - t0) / len(items)
        head = self.cfg.selection.candidates
        out = []
        for (_, _, ki), cl in zip(items, cands):
            texts = {c.entity_id: self.index.text(c.entity_id) for c in cl[: max(head, 1)]}
            out.append((cl[:ki] if ki >= head else cl[:head], texts, per))
        return out


class SelectorDeployment:
    """The LLM engine (vLLM) and the multiple-choice selector; LoRA adapters chosen per request."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from mel import compat

        compat.prepare()
        from mel.llm import build_llm_engine as build_engine
        from mel.models.sources import default_cache_dir

        self.cfg = Config.model_validate(cfg)
        self.engine = build_engine(self.cfg.models.llm, default_cache_dir(self.cfg.models.cache_dir))
        self.select_batch.set_max_batch_size(self.cfg.serve.selector.max_batch_size)
        self.select_batch.set_batch_wait_timeout_s(self.cfg.serve.selector.batch_wait_timeout_s)

    async def select(self, mention: Mention, candidates: list[Candidate], texts: dict[str, str],
                     adapter: str | None) -> tuple[list[Candidate], float]:
        return await self.select_batch((mention, candidates, texts, adapter))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def select_batch(self, items: list[tuple[Mention, list[Candidate], dict[str, str], str | None]]) -> list[Any]:
        from mel.llm.base import LoRASpec
        from mel.stages.select import LLMSelector

        t0 = time.perf_counter()
        texts: dict[str, str] = {}
        for it in items:
            texts.update(it[2])
        selector = LLMSelector(self.engine, self.cfg.selection, lambda eid: texts.get(eid, ""))
        out: list[Any] = [None] * len(items)
        by_adapter: dict[str | None, list[int]] = {}
        for i, it in enumerate(items):
            by_adapter.setdefault(it[3], []).append(i)
        for name, idx in by_adapter.items():
            lora = LoRASpec(name, self.cfg.selection.adapters[name]) if name else None
            res = selector.select([items[i][0] for i in idx], [items[i][1] for i in idx], lora=lora)
            for i, r in zip(idx, res):
                out[i] = r
        per = 1000 * (time.perf_counter() - t0) / len(items)
        return [(r, per) for r in out]

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 -- best effort at teardown
                pass
