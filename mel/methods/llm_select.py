"""``llm-select``: retrieval, [cross-encoder re-ranking,] then an LLM picks among the top candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.methods.base import Components, Linker, build_reranker
from mel.methods.registry import register

if TYPE_CHECKING:
    from mel.config import Config


@register("llm-select")
def build(cfg: Config, parts: Components) -> Linker:
    from mel.methods import needs_llm
    from mel.stages.retrieve import Retriever
    from mel.stages.select import LLMSelector

    retriever = Retriever(parts.index, parts.text_encoder, cfg.retrieval, parts.image_encoder)
    reranker = build_reranker(cfg, parts)
    if not needs_llm(cfg, "llm-select"):  # selection off, or weight 0: the LLM could not change a score
        return Linker("llm-select", retriever, None, cfg.nil.threshold, reranker=reranker)
    if parts.engine is None:
        raise ValueError("method 'llm-select' needs an LLM engine (Components.engine)")
    selector = LLMSelector(parts.engine, cfg.selection, parts.index.text)
    return Linker("llm-select", retriever, selector, cfg.nil.threshold, reranker=reranker)
