"""Selection stage: an LLM picks among the top retrieved candidates as a multiple-choice question.

Output is constrained to the option letters and decoded greedily, so it is deterministic. The
engine's probability over the letters is fused with the retrieval score:
``final = (1 - w) * retrieval + w * P(letter)``; options not shown keep ``(1 - w) * retrieval``. "retrieval" is the
score a candidate enters the stage with: the retrieval score, or the re-ranked score when ``retrieval.rerank`` is on.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING

from mel.config import SelectionConfig
from mel.types import Candidate, Mention

if TYPE_CHECKING:
    from mel.llm.base import LLMEngine, LoRASpec

LETTERS = string.ascii_uppercase

SYSTEM_PROMPT = (
    "You are an entity linker. Given a mention in context and candidate entities from a knowledge base, "
    "answer with the letter of the entity the mention refers to."
)


def fuse(retrieval: float, llm_prob: float, weight: float) -> float:
    """The selector's final score: ``(1 - weight) * retrieval + weight * P(option)``."""
    return (1 - weight) * retrieval + weight * llm_prob


def build_prompt(mention: Mention, options: list[tuple[str, str]], max_chars: int) -> str:
    """The user message: the mention, its context, and lettered options ``(name, text)``."""
    lines = [f"Mention: {mention.surface}"]
    if mention.context:
        lines.append(f"Context: {mention.context}")
    lines.append("Candidates:")
    for letter, (name, text) in zip(LETTERS, options):
        desc = text[:max_chars].rstrip()
        lines.append(f"{letter}. {name}" + (f" -- {desc}" if desc else ""))
    lines.append("Which candidate does the mention refer to? Answer with the letter only.")
    return "\n".join(lines)


PROMPT_VERSION = 1
"""Bumped whenever :func:`selection_prompt` renders differently; adapters record the version they were trained on."""


def selection_prompt(mention: Mention, head: list[Candidate], entity_text: Callable[[str], str],
                     cfg: SelectionConfig, format_chat: Callable[[str, str], str]) -> tuple[str, list[str]]:
    """The chat prompt showing ``head`` as lettered options, and the letters offered. The one place the selector's
    prompt is built: serving (:class:`LLMSelector`) and training (``mel.train.selector``) both call it, so they
    cannot drift."""
    opts = [(c.name, entity_text(c.entity_id)) for c in head]
    user = build_prompt(mention, opts, cfg.max_description_chars)
    return format_chat(SYSTEM_PROMPT, user), list(LETTERS[: len(head)])


class LLMSelector:
    """Re-ranks the head of each candidate list with an :class:`LLMEngine`."""

    def __init__(self, engine: LLMEngine, cfg: SelectionConfig, entity_text: Callable[[str], str],
                 format_chat: Callable[[str, str], str] | None = None) -> None:
        self.engine = engine
        self.cfg = cfg
        self.entity_text = entity_text
        self.format_chat = format_chat or getattr(engine, "format_chat", None) or (lambda s, u: f"{s}\n\n{u}\n")

    def prompts(self, mentions: list[Mention], candidate_lists: list[list[Candidate]]) -> list[tuple[str, list[str]]]:
        return [selection_prompt(m, cands[: self.cfg.candidates], self.entity_text, self.cfg, self.format_chat)
                for m, cands in zip(mentions, candidate_lists)]

    def select(self, mentions: list[Mention], candidate_lists: list[list[Candidate]],
               lora: LoRASpec | None = None) -> list[list[Candidate]]:
        """Return each candidate list re-scored and re-sorted; lists with < 2 candidates pass through."""
        todo = [i for i, c in enumerate(candidate_lists) if len(c) >= 2]
        result = [list(c) for c in candidate_lists]
        if not todo or self.cfg.fusion_weight == 0:
            return result  # with weight 0 the LLM's vote could not change any score: skip the engine
        built = self.prompts([mentions[i] for i in todo], [candidate_lists[i] for i in todo])
        choices = self.engine.choose([p for p, _ in built], [c for _, c in built], lora=lora)
        w = self.cfg.fusion_weight
        for i, (_, labels), choice in zip(todo, built, choices):
            probs = choice.probs or {choice.label: 1.0}
            rescored = []
            for j, c in enumerate(candidate_lists[i]):
                p = probs.get(labels[j], 0.0) if j < len(labels) else 0.0
                scores = dict(c.scores)
                scores["pre_select"] = c.score  # what the candidate entered with (tuning the fusion reads it)
                if j < len(labels):
                    scores["llm"] = p
                final = fuse(c.score, p, w)  # the score entering the stage: retrieval, or re-ranked when on
                scores["final"] = final
                rescored.append(Candidate(c.entity_id, c.name, final, scores))
            rescored.sort(key=lambda c: -c.score)
            result[i] = rescored
        return result
