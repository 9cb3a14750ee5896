"""NIL decision: the last step of every method, shared by online and batch linking."""

from __future__ import annotations

from mel.types import Candidate, LinkResult, Mention


def finalize(mention: Mention, candidates: list[Candidate], *, threshold: float | None, method: str,
             timings_ms: dict[str, float] | None = None, score: float | None = None) -> LinkResult:
    """Answer the top candidate, or NIL when there is none or the final score is below ``threshold``. The final
    score is the top candidate's, or ``score`` when given (a link confidence, :mod:`mel.confidence`)."""
    if not candidates:
        return LinkResult(mention.id, None, 0.0, [], dict(timings_ms or {}), method)
    top = candidates[0]
    final = top.score if score is None else score
    nil = threshold is not None and final < threshold
    return LinkResult(mention.id, None if nil else top.entity_id, final, candidates,
                      dict(timings_ms or {}), method)
