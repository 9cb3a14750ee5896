"""``retrieve``: text (and image) embedding retrieval from the index (:class:`mel.stages.retrieve.Retriever`)."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class RetrieveStep(Step):
    """Fetches ``retrieval.top_k`` candidates per mention (more when a caller asks for more: ``state.k``), best
    first, and carries every candidate's passage text in ``state.texts`` for steps on other hosts."""

    name: ClassVar[str] = "retrieve"
    needs = frozenset({"text_encoder", "image_encoder", "index"})
    reads = ("retrieval",)
    code = ("mel.stages.retrieve", "mel.text")

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.stages.retrieve import Retriever

        super().__init__(cfg, parts)
        index = parts.require("index", self.name)
        encoder = parts.require("text_encoder", self.name)
        self.index = index
        self.retriever = Retriever(index, encoder, cfg.retrieval, parts.image_encoder)

    def pool(self, k: int | None) -> int:
        """Candidates fetched for a caller asking for ``k``: the configured top_k, or ``k`` when larger."""
        return max(k or 0, self.cfg.retrieval.top_k)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        if not states:
            return states
        images = [s.image for s in states]
        given = images if any(im is not None for im in images) else None  # None: the retriever opens mention.image
        pool = max(self.pool(s.k) for s in states)
        cands = self.retriever.retrieve([s.view("retrieval") for s in states], given, k=pool)
        for s, c in zip(states, cands, strict=True):
            s.candidates = c[: self.pool(s.k)]
            s.texts = {x.entity_id: self.index.text(x.entity_id) for x in s.candidates}
        return states
