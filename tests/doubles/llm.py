"""Deterministic LLM engine for UNIT TESTS ONLY: no model, no vLLM.

``choose()`` reads option lines such as ``A) Paris, capital of France`` (also ``A.``/``A:``/``(A)``) from the
prompt and picks the label whose option text shares the most words with the rest of the prompt (ties: the
earliest label). A label without an option line is scored by its own words. ``probs`` is a softmax of the
overlap counts, so the choice is also the most probable label.
"""

from __future__ import annotations

import math
import re

from mel.errors import InputError
from mel.llm.base import Choice, LoRASpec

_OPTION = re.compile(r"^\s*\(?([A-Za-z0-9]{1,3})[).:]\s+(.*\S)\s*$")
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1}


class FakeLLMEngine:
    """Word-overlap chooser; records every call in ``calls`` for tests to inspect."""

    def __init__(self, *, model_id: str = "fake:word-overlap", temperature: float = 1.0) -> None:
        self._id = model_id
        self.temperature = temperature
        self.calls: list[tuple[str, int, str | None]] = []
        self.closed = False

    @property
    def id(self) -> str:
        return self._id

    def format_chat(self, system: str | None, user: str) -> str:
        return (f"<system>{system}</system>\n" if system else "") + f"<user>{user}</user>\n<assistant>"

    def choose(self, prompts: list[str], choices: list[list[str]], lora: LoRASpec | None = None) -> list[Choice]:
        self._check_open()
        if len(prompts) != len(choices):
            raise InputError(f"choose(): {len(prompts)} prompts but {len(choices)} choice lists")
        self.calls.append(("choose", len(prompts), lora.name if lora else None))
        return [self._choose_one(i, p, labels) for i, (p, labels) in enumerate(zip(prompts, choices, strict=True))]

    def _choose_one(self, i: int, prompt: str, labels: list[str]) -> Choice:
        if isinstance(labels, str) or not labels or len(set(labels)) != len(labels):
            raise InputError(f"choose(): prompt {i}: choices must be a non-empty list of distinct labels")
        options: dict[str, str] = {}
        rest: list[str] = []
        for line in prompt.splitlines():
            m = _OPTION.match(line)
            if m and m.group(1) in labels and m.group(1) not in options:
                options[m.group(1)] = m.group(2)
            else:
                rest.append(line)
        question = _words("\n".join(rest))
        scores = [float(len(question & _words(options.get(lab, lab)))) for lab in labels]
        top = max(scores)
        weights = [math.exp((s - top) / self.temperature) for s in scores]
        total = sum(weights)
        probs = {lab: w / total for lab, w in zip(labels, weights, strict=True)}
        best = labels[scores.index(top)]
        return Choice(label=best, logprob=math.log(probs[best]), probs=probs)

    def generate(self, prompts: list[str], max_tokens: int = 64, lora: LoRASpec | None = None) -> list[str]:
        self._check_open()
        self.calls.append(("generate", len(prompts), lora.name if lora else None))
        return [" ".join(p.split()[-max_tokens:]) for p in prompts]

    def shutdown(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the fake engine was shut down")
