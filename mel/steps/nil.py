"""``nil``: the closing step. Answers the top candidate, or NIL when there is none or the final score is below
``nil.threshold``; decided on the full list, then the answer's candidates are cut to what the caller asked for.
The final score is the top candidate's, or, with a link-confidence model (``nil.confidence``, fitted by
``mel calibrate``), the probability that the top candidate is right (also kept as its ``scores["confidence"]``)."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class NilStep(Step):
    name: ClassVar[str] = "nil"
    reads = ("nil", "retrieval")
    code = ("mel.stages.nil", "mel.confidence")
    closes = True
    timed = False

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.confidence import predict
        from mel.stages.nil import finalize

        model = self.cfg.nil.confidence
        for s in states:
            conf = None
            if model is not None and s.candidates:
                conf = predict(model, s.mention, s.candidates)
                s.candidates[0].scores["confidence"] = conf
            res = finalize(s.mention, s.candidates, threshold=self.cfg.nil.threshold, method="",
                           timings_ms=s.timings_ms, score=conf)
            res.candidates = res.candidates[: s.k or self.cfg.retrieval.top_k]
            res.description = s.description
            s.result = res
        return states
