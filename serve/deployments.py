"""Model-bearing deployments of the linking graph. Plain classes here; ``serve.app`` turns them into Serve
deployments with resources, autoscaling, queue limits and batching from config.

Each takes one handle call per HTTP request (all its mentions), so queue limits count requests; inside the replica
the mentions of all callers are batched together by ``@serve.batch`` and run through the steps of
:mod:`serve.linking` (the code ``mel link`` runs too).

The Retriever loads its index in :meth:`RetrieverDeployment.reconfigure` from ``user_config={"index_dir": ...}``,
so a new index version is served by redeploying with another ``index_dir``: Serve calls ``reconfigure`` on the
running replicas, which load and validate the new index beside the old one and then swap a single reference;
batches already running finish on the old index, and no request is refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from mel.config import Config
from mel.types import Candidate, Mention
from serve.linking import Retrieved, RetrieveStep, SelectStep
from serve.telemetry import IndexMetrics, StageMetrics, current_request_id, log_event

RETRIEVER = "Retriever"
SELECTOR = "Selector"


class RetrieverDeployment:
    """Text (and image) encoder + faiss index (+ cross-encoder when re-ranking is on). Mentions from many callers
    are batched together."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from mel import compat

        compat.prepare()
        from mel.encoders import build_image_encoder, build_text_encoder
        from mel.methods.base import needs_rerank
        from mel.models.sources import default_cache_dir

        self.cfg = Config.model_validate(cfg)
        cache = default_cache_dir(self.cfg.models.cache_dir)
        self.text_encoder = build_text_encoder(self.cfg.models.text_encoder, cache)
        self.image_encoder = (build_image_encoder(self.cfg.models.image_encoder)
                              if self.cfg.models.image_encoder.enabled else None)
        self.cross_encoder = None
        if needs_rerank(self.cfg):
            from mel.rerank import build_cross_encoder

            self.cross_encoder = build_cross_encoder(self.cfg.retrieval.rerank, cache)
        self.step: RetrieveStep | None = None
        self.index_dir: str | None = None
        self._switch_lock = asyncio.Lock()
        self._batches = 0
        self.metrics = StageMetrics("retrieve", self.cfg.method)
        self.index_metrics = IndexMetrics()
        self.retrieve_batch.set_max_batch_size(self.cfg.serve.retriever.max_batch_size)
        self.retrieve_batch.set_batch_wait_timeout_s(self.cfg.serve.retriever.batch_wait_timeout_s)

    # ------------------------------------------------------------------ index versions
    def _load(self, index_dir: str) -> RetrieveStep:
        from mel.methods.base import load_components

        parts = load_components(self.cfg, index_dir, need_llm=False, text_encoder=self.text_encoder,
                                image_encoder=self.image_encoder, cross_encoder=self.cross_encoder)
        return RetrieveStep(self.cfg, parts)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config`` at start and whenever it changes. Loads (and
        validates against the configured encoder) the index in ``index_dir`` off the event loop, then swaps it in;
        requests keep being served from the old index until the swap."""
        unknown = set(user_config) - {"index_dir"}
        if unknown or not isinstance(user_config.get("index_dir"), str):
            raise ValueError(f"Retriever user_config must be {{'index_dir': '<index directory>'}}, got "
                             f"{user_config!r}")
        index_dir = os.path.abspath(user_config["index_dir"])
        async with self._switch_lock:
            if index_dir == self.index_dir and self.step is not None:
                return
            t0 = time.perf_counter()
            step = await asyncio.to_thread(self._load, index_dir)
            old = self.index_dir
            self.step, self.index_dir = step, index_dir  # one reference: running batches keep the step they took
            self.index_metrics.loaded(len(step.index))
            log_event("reconfigure", RETRIEVER, current_request_id(), 1000 * (time.perf_counter() - t0),
                      f"serving index {index_dir}", index_dir=index_dir, previous_index_dir=old,
                      entities=len(step.index), kb_hash=step.index.manifest.kb_hash)

    def info(self) -> dict[str, Any]:
        step = self._step()
        m = step.index.manifest
        return {"entities": len(step.index), "encoder_id": m.encoder_id, "kb_hash": m.kb_hash,
                "factory": m.factory, "image_encoder_id": m.image_encoder_id, "index_dir": self.index_dir,
                "replica": serve.get_replica_context().replica_tag}

    def _step(self) -> RetrieveStep:
        if self.step is None:
            raise RuntimeError("the Retriever has no index loaded (user_config.index_dir was never applied)")
        return self.step

    # ------------------------------------------------------------------ requests
    async def retrieve(self, mentions: list[Mention], images: list[Any], k: int,
                       request_id: str = "") -> tuple[list[Retrieved], dict[str, float], list[int]]:
        """The mentions of one request in; batched with other callers' mentions by ``retrieve_batch``. Returns per
        mention its candidates (the configured top_k or ``k``, whichever is larger); the model time of the batches
        the request's mentions ran in, per stage (ms); and the sizes of those batches."""
        t0 = time.perf_counter()
        rid = request_id or current_request_id()
        outs = await gather_batched(self.metrics, RETRIEVER, rid, t0,
                                    [self.retrieve_batch((m, im, k)) for m, im in zip(mentions, images)])
        results = [o[0] for o in outs]
        model_ms, sizes = batch_totals(outs)
        ms = 1000 * (time.perf_counter() - t0)
        self.metrics.call(ms, candidates=[len(r.candidates) for r in results])
        log_event("retrieve", RETRIEVER, rid, ms, mentions=len(mentions), batch_sizes=sizes,
                  model_ms=round(sum(model_ms.values()), 3), index_dir=self.index_dir)
        return results, model_ms, sizes

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def retrieve_batch(self, items: list[tuple[Mention, Any, int]]) -> list[tuple[Retrieved, dict[str, float],
                                                                                          int, int]]:
        step = self._step()  # taken once: an index switch during this batch does not affect it
        self._batches += 1
        self.metrics.batch(len(items))
        results, batch_ms = step.run([it[0] for it in items], [it[1] for it in items], max(it[2] for it in items))
        return [(Retrieved(r.candidates[: step.pool(it[2])], r.texts), batch_ms, len(items), self._batches)
                for r, it in zip(results, items)]


async def gather_batched(metrics: StageMetrics, deployment: str, request_id: str, t0: float,
                         calls: list[Any]) -> list[Any]:
    """Await one request's per-mention ``@serve.batch`` calls; on failure record the error metric and an error
    log line for the stage (``metrics.stage``) before re-raising."""
    try:
        return list(await asyncio.gather(*calls))
    except Exception as e:
        ms = 1000 * (time.perf_counter() - t0)
        metrics.call(ms, error="internal")
        log_event(metrics.stage, deployment, request_id, ms, f"{metrics.stage} failed: {e!r}", level=logging.ERROR,
                  mentions=len(calls))
        raise


def batch_totals(outs: list[tuple[Any, dict[str, float], int, int]]) -> tuple[dict[str, float], list[int]]:
    """Per stage, the model time of the distinct batches a request's items ran in (ms), and their sizes."""
    seen: dict[int, tuple[dict[str, float], int]] = {}
    for _, ms, size, batch_id in outs:
        seen.setdefault(batch_id, (ms, size))
    totals: dict[str, float] = {}
    for ms, _ in seen.values():
        for key, v in ms.items():
            totals[key] = totals.get(key, 0.0) + v
    return totals, [size for _, size in seen.values()]


class SelectorDeployment:
    """The LLM engine (vLLM) and the multiple-choice selector; LoRA adapters chosen per request."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from mel import compat

        compat.prepare()
        from mel.llm import build_llm_engine as build_engine
        from mel.models.sources import default_cache_dir

        self.cfg = Config.model_validate(cfg)
        self.engine = build_engine(self.cfg.models.llm, default_cache_dir(self.cfg.models.cache_dir))
        self.step = SelectStep(self.cfg, self.engine)
        self._batches = 0
        self.metrics = StageMetrics("select", self.cfg.method)
        self.select_batch.set_max_batch_size(self.cfg.serve.selector.max_batch_size)
        self.select_batch.set_batch_wait_timeout_s(self.cfg.serve.selector.batch_wait_timeout_s)

    async def select(self, mentions: list[Mention], retrieved: list[Retrieved], adapter: str | None,
                     request_id: str = "") -> tuple[list[list[Candidate]], float, list[int]]:
        """The mentions of one request in; batched across callers by ``select_batch``. Returns the re-scored
        candidate lists, the engine time of the batches they ran in (ms), and the batch sizes."""
        t0 = time.perf_counter()
        rid = request_id or current_request_id()
        outs = await gather_batched(self.metrics, SELECTOR, rid, t0,
                                    [self.select_batch((m, r, adapter)) for m, r in zip(mentions, retrieved)])
        cands = [o[0] for o in outs]
        model_ms, sizes = batch_totals(outs)
        ms = 1000 * (time.perf_counter() - t0)
        self.metrics.call(ms, candidates=[len(c) for c in cands])
        log_event("select", SELECTOR, rid, ms, mentions=len(mentions), batch_sizes=sizes,
                  model_ms=round(model_ms.get("select", 0.0), 3), adapter=adapter)
        return cands, model_ms.get("select", 0.0), sizes

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def select_batch(self, items: list[tuple[Mention, Retrieved, str | None]]) -> list[Any]:
        t0 = time.perf_counter()
        self._batches += 1
        self.metrics.batch(len(items))
        res = self.step.run([it[0] for it in items], [it[1] for it in items], [it[2] for it in items])
        ms = {"select": 1000 * (time.perf_counter() - t0)}
        return [(r, ms, len(items), self._batches) for r in res]

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 -- best effort at teardown
                pass
