"""A linking method composes the shared stages (retrieve -> [rerank] -> [select] -> NIL) into ``link(mentions)``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mel.stages.nil import finalize
from mel.types import LinkResult, Mention

if TYPE_CHECKING:
    from PIL import Image

    from mel.config import Config
    from mel.encoders.base import ImageEncoder, TextEncoder
    from mel.index.artifact import IndexArtifact
    from mel.llm.base import LLMEngine, LoRASpec
    from mel.rerank.base import CrossEncoder
    from mel.stages.rerank import Reranker
    from mel.stages.retrieve import Retriever
    from mel.stages.select import LLMSelector


@dataclass
class Components:
    """The heavy parts a method is built from; passed in so tests and servers can share them."""

    index: IndexArtifact
    text_encoder: TextEncoder
    image_encoder: ImageEncoder | None = None
    engine: LLMEngine | None = None
    cross_encoder: CrossEncoder | None = None
    """Built when ``retrieval.rerank`` is enabled with a weight above 0 (see :func:`build_reranker`)."""


class Linker:
    """Runs the stages of one method over a batch of mentions. Online (Serve) and batch (Ray Data)
    linking call the same stage objects, so they give the same answers."""

    def __init__(self, name: str, retriever: Retriever, selector: LLMSelector | None = None,
                 nil_threshold: float | None = None, reranker: Reranker | None = None) -> None:
        self.name = name
        self.retriever = retriever
        self.selector = selector
        self.nil_threshold = nil_threshold
        self.reranker = reranker

    def link(self, mentions: list[Mention], images: list[Image.Image | None] | None = None,
             lora: LoRASpec | None = None) -> list[LinkResult]:
        t0 = time.perf_counter()
        cands = self.retriever.retrieve(mentions, images)
        t1 = time.perf_counter()
        per = 1000 * (t1 - t0) / max(1, len(mentions))
        timings = [{"retrieve": per} for _ in mentions]
        if self.reranker is not None:
            cands = self.reranker.rerank(mentions, cands)
            t2 = time.perf_counter()
            for t in timings:
                t["rerank"] = 1000 * (t2 - t1) / max(1, len(mentions))
            t1 = t2
        if self.selector is not None:
            cands = self.selector.select(mentions, cands, lora=lora)
            sel = 1000 * (time.perf_counter() - t1) / max(1, len(mentions))
            for t in timings:
                t["select"] = sel
        return [finalize(m, c, threshold=self.nil_threshold, method=self.name, timings_ms=t)
                for m, c, t in zip(mentions, cands, timings)]


def needs_rerank(cfg: Config) -> bool:
    """True when ``retrieval.rerank`` is on with a weight that can change an answer (> 0)."""
    return cfg.retrieval.rerank.enabled and cfg.retrieval.rerank.weight > 0


def build_reranker(cfg: Config, parts: Components) -> Reranker | None:
    """The re-ranking stage for ``cfg`` from ``parts.cross_encoder``, or None when re-ranking is off."""
    if not needs_rerank(cfg):
        return None
    if parts.cross_encoder is None:
        raise ValueError("retrieval.rerank is enabled but no cross-encoder was given (Components.cross_encoder)")
    from mel.stages.rerank import Reranker, entity_passages

    rcfg = cfg.retrieval.rerank
    return Reranker(parts.cross_encoder, rcfg, entity_passages(parts.index, rcfg.entity_template))


def load_components(cfg: Config, index_dir: str, *, need_llm: bool,
                    text_encoder: TextEncoder | None = None, image_encoder: ImageEncoder | None = None,
                    engine: LLMEngine | None = None, cross_encoder: CrossEncoder | None = None) -> Components:
    """Build (or take) the encoders, cross-encoder and engine, and load the index checked against them."""
    from mel.encoders import build_image_encoder, build_text_encoder
    from mel.index.artifact import IndexArtifact
    from mel.models.sources import default_cache_dir

    cache = default_cache_dir(cfg.models.cache_dir)
    text_encoder = text_encoder or build_text_encoder(cfg.models.text_encoder, cache)
    if image_encoder is None and cfg.models.image_encoder.enabled:
        image_encoder = build_image_encoder(cfg.models.image_encoder)
    index = IndexArtifact.load(
        index_dir, expect_encoder_id=text_encoder.id, expect_dim=text_encoder.dim,
        expect_image_encoder_id=image_encoder.id if image_encoder is not None else None,
        nprobe=cfg.index.nprobe, use_gpu=cfg.index.use_gpu)
    if need_llm and engine is None:
        from mel.llm import build_llm_engine as build_engine

        engine = build_engine(cfg.models.llm, cache)
    if cross_encoder is None and needs_rerank(cfg):
        from mel.rerank import build_cross_encoder

        cross_encoder = build_cross_encoder(cfg.retrieval.rerank, cache)
    return Components(index, text_encoder, image_encoder, engine, cross_encoder)
