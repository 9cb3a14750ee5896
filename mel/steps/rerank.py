"""``rerank``: a cross-encoder re-scores the head of each candidate list (:class:`mel.stages.rerank.Reranker`).

Optional: active when ``retrieval.rerank.enabled`` with a weight above 0."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step

if TYPE_CHECKING:
    from mel.config import Config


def needs_rerank(cfg: Config) -> bool:
    """True when ``retrieval.rerank`` is on with a weight that can change an answer (> 0)."""
    return cfg.retrieval.rerank.enabled and cfg.retrieval.rerank.weight > 0


@register_step
class RerankStep(Step):
    name: ClassVar[str] = "rerank"
    needs = frozenset({"cross_encoder", "index"})
    reads = ("retrieval.rerank",)
    code = ("mel.stages.rerank", "mel.text")

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return needs_rerank(cfg)

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.stages.rerank import Reranker, entity_passages

        super().__init__(cfg, parts)
        rcfg = cfg.retrieval.rerank
        self.reranker = Reranker(parts.require("cross_encoder", self.name), rcfg,
                                 entity_passages(parts.require("index", self.name), rcfg.entity_template))

    def run(self, states: list[MentionState]) -> list[MentionState]:
        cands = self.reranker.rerank([s.view("retrieval") for s in states], [s.candidates for s in states])
        for s, c in zip(states, cands, strict=True):
            s.candidates = c
        return states
