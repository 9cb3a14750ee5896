"""``attribute_filter``: among the head of each candidate list (``ameli.text.candidates``), candidates whose
attribute values contradict a value the mention names are moved behind the others and marked
``scores["filtered"] = 1`` (rules in :mod:`mel.ameli.attributes`); never the last one. The evaluator counts how
often the gold was filtered."""

from __future__ import annotations

from typing import ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step


@register_step
class AttributeFilterStep(Step):
    name: ClassVar[str] = "attribute_filter"
    needs = frozenset({"index"})
    reads = ("ameli.filter", "ameli.text.candidates")
    code = ("mel.ameli.attributes",)

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.ameli.attributes import FilterRule

        super().__init__(cfg, parts)
        self.index = parts.require("index", self.name)
        f = cfg.ameli.filter
        self.rule = FilterRule(f.min_chars, f.value_separator, tuple(f.keys) if f.keys is not None else None)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.ameli.attributes import attribute_filter

        n = self.cfg.ameli.text.candidates
        for s in states:
            head = s.candidates[:n]
            if len(head) < 2:
                continue
            res = attribute_filter(s.mention, [self.index.entity(c.entity_id) for c in head], self.rule)
            if not res.removed:
                continue
            for i in res.removed:
                head[i].scores["filtered"] = 1.0
            s.candidates = ([head[i] for i in res.kept] + s.candidates[n:]
                            + [head[i] for i in sorted(res.removed)])
        return states
