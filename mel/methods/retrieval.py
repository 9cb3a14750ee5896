"""``retrieval``: dense retrieval (then cross-encoder re-ranking when ``retrieval.rerank`` is on); the top candidate is
the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.methods.base import Components, Linker, build_reranker
from mel.methods.registry import register

if TYPE_CHECKING:
    from mel.config import Config

NEEDS_LLM = False


@register("retrieval")
def build(cfg: Config, parts: Components) -> Linker:
    from mel.stages.retrieve import Retriever

    retriever = Retriever(parts.index, parts.text_encoder, cfg.retrieval, parts.image_encoder)
    return Linker("retrieval", retriever, None, cfg.nil.threshold, reranker=build_reranker(cfg, parts))
