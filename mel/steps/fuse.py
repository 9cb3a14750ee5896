"""``fuse``: AMELI's fusion of the incoming score with the text (``entail``) and image streams over the head of each
candidate list, filtered candidates last (:func:`mel.ameli.fusion.fuse`). Needs no part: runs where the ingress is."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class FuseStep(Step):
    name: ClassVar[str] = "fuse"
    reads = ("ameli.fusion", "ameli.text.candidates")
    code = ("mel.ameli.fusion",)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.ameli.fusion import fuse

        f = self.cfg.ameli.fusion
        for s in states:
            s.candidates = fuse(s.candidates, self.cfg.ameli.text.candidates, lam=f.lam, prior_weight=f.prior_weight,
                                how=f.normalize, temperature=f.temperature)
        return states
