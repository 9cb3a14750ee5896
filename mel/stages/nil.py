"""NIL decision: the last step of every method, shared by online and batch linking."""

from __future__ import annotations

from mel.types import Candidate, LinkResult, Mention


def finalize(mention: Mention, candidates: list[Candidate], *, threshold: float | None, method: str,
             timings_ms: dict[str, float] | None = None) -> LinkResult:
    """Answer the top candidate, or NIL when there is none or its score is below ``threshold``."""
    if not candidates:
        return LinkResult(mention.id, None, 0.0, [], dict(timings_ms or {}), method)
    top = candidates[0]
    nil = threshold is not None and top.score < threshold
    return LinkResult(mention.id, None if nil else top.entity_id, top.score, candidates,
                      dict(timings_ms or {}), method)
