"""``describe``: an LLM says in one sentence what each mention refers to (UniMEL's mention descriptions,
:mod:`mel.augment.mention`); later steps show it appended to the mention's context where
``augment.mentions.in_retrieval`` / ``in_selection`` ask. Active when ``augment.mentions.enabled``; descriptions
are cached under ``augment.mentions.cache_dir`` when it is set."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mel.steps import register_step
from mel.steps.base import MentionState, Step

if TYPE_CHECKING:
    from mel.config import Config


@register_step
class DescribeStep(Step):
    name: ClassVar[str] = "describe"
    needs = frozenset({"llm"})
    reads = ("augment.mentions",)
    code = ("mel.augment.mention", "mel.augment.base", "mel.augment.store")

    @classmethod
    def active(cls, cfg: Config) -> bool:
        return cfg.augment.mentions.enabled

    def __init__(self, cfg, parts) -> None:  # noqa: ANN001
        from mel.augment.base import engine_identity
        from mel.augment.mention import DescriptionCache

        super().__init__(cfg, parts)
        self.engine = parts.require("llm", self.name)
        self.model = engine_identity(self.engine)
        m = cfg.augment.mentions
        self.cache = DescriptionCache(m.cache_dir) if m.cache_dir else None
        self.use = tuple(u for u, on in (("retrieval", m.in_retrieval), ("selection", m.in_selection)) if on)

    def run(self, states: list[MentionState]) -> list[MentionState]:
        from mel.augment.mention import describe

        texts = describe(self.engine, [s.mention for s in states], self.cfg.augment.mentions, self.cache, self.model)
        for s, d in zip(states, texts, strict=True):
            s.description, s.description_in = d, self.use
        return states
