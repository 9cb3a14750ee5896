"""``select``: an LLM picks among the head of each candidate list as multiple choice
(:class:`mel.stages.select.LLMSelector`), with the LoRA adapter the state names.

Active when ``selection.enabled`` with a fusion weight above 0 (at 0 the LLM could not change a score, so no engine
is built and Serve deploys no LLM host)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step

if TYPE_CHECKING:
    from mel.config import Config


@register_step
class SelectStep(Step):
    name: ClassVar[str] = "select"
    needs = frozenset({"llm"})
    reads = ("selection",)
    code = ("mel.stages.select", "mel.llm.base")

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return cfg.selection.enabled and cfg.selection.fusion_weight > 0

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        super().__init__(cfg, parts)
        self.engine = parts.require("llm", self.name)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.errors import InputError
        from mel.llm.base import LoRASpec
        from mel.stages.select import LLMSelector

        texts: dict[str, str] = {}
        for s in states:
            texts.update(s.texts)

        def selector_for(engine) -> LLMSelector:  # noqa: ANN001
            return LLMSelector(engine, self.cfg.selection, lambda eid: texts.get(eid, ""))

        base = selector_for(self.engine)
        by_adapter: dict[str | None, list[MentionState]] = {}
        for s in states:
            by_adapter.setdefault(s.adapter, []).append(s)
        for name, group in by_adapter.items():
            if name is not None and name not in self.cfg.selection.adapters:
                raise InputError(f"unknown adapter {name!r}; known: {sorted(self.cfg.selection.adapters)}",
                                 field="adapter")
            merged = self.parts.adapter_engines.get(name) if name else None
            if merged is not None:  # the adapter folded into its own engine: no per-request LoRA
                res = selector_for(merged).select([s.view("selection") for s in group], [s.candidates for s in group])
            else:
                lora = LoRASpec(name, self.cfg.selection.adapters[name]) if name else None
                res = base.select([s.view("selection") for s in group], [s.candidates for s in group], lora=lora)
            for s, c in zip(group, res, strict=True):
                s.candidates = c
        return states
