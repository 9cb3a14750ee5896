"""``entail``: AMELI's text stream. For the head of each candidate list (``ameli.text.candidates``), the mention's
context (with its description, when the ``describe`` step added one for retrieval) is the premise and each of the
candidate's attribute statements (:mod:`mel.ameli.statements`) a hypothesis; the ``nli`` part scores every pair of
the batch in one call and a candidate's scores are aggregated into ``scores["entail"]``."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class EntailStep(Step):
    name: ClassVar[str] = "entail"
    needs = frozenset({"nli", "index"})
    reads = ("ameli.text",)
    code = ("mel.ameli.statements", "mel.ameli.entail")

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        super().__init__(cfg, parts)
        self.scorer = parts.require("nli", self.name)
        self.index = parts.require("index", self.name)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.ameli.statements import aggregate, statements

        tcfg = self.cfg.ameli.text
        pairs: list[tuple[str, str]] = []
        spans: list[tuple[int, int, int]] = []  # (state, candidate, end of its pairs)
        for si, s in enumerate(states):
            m = s.view("retrieval")
            premise = m.context.strip() or m.surface
            for ci, c in enumerate(s.candidates[: tcfg.candidates]):
                pairs.extend((premise, h) for h in statements(m, self.index.entity(c.entity_id), tcfg))
                spans.append((si, ci, len(pairs)))
        if not pairs:
            return states
        ent, con = self.scorer.entailment(pairs)
        if len(ent) != len(pairs):
            raise RuntimeError(f"entailment scorer {self.scorer.id} returned {len(ent)} scores for {len(pairs)} pairs")
        start = 0
        for si, ci, end in spans:
            e = [float(x) for x in ent[start:end]]
            c = [float(x) for x in con[start:end]] if con is not None else [None] * len(e)
            states[si].candidates[ci].scores["entail"] = aggregate(e, c, tcfg.aggregation)
            start = end
        return states
