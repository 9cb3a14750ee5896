"""``nil``: the closing step. Answers the top candidate, or NIL when there is none or its score is below
``nil.threshold``; decided on the full list, then the answer's candidates are cut to what the caller asked for."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class NilStep(Step):
    name: ClassVar[str] = "nil"
    reads = ("nil", "retrieval")
    code = ("mel.stages.nil",)
    closes = True
    timed = False

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.stages.nil import finalize

        for s in states:
            res = finalize(s.mention, s.candidates, threshold=self.cfg.nil.threshold, method="",
                           timings_ms=s.timings_ms)
            res.candidates = res.candidates[: s.k or self.cfg.retrieval.top_k]
            s.result = res
        return states
