"""LLM engine interface used by selectors. The vLLM implementation is in vllm_engine.py; a test double
for unit tests only is in tests/doubles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class LoRASpec:
    """A LoRA adapter chosen per request: a unique name and the adapter directory (peft format)."""

    name: str
    path: str


@dataclass(frozen=True)
class Choice:
    """The engine's pick for one prompt: the chosen label and its log-probability, plus a normalised
    probability distribution over all offered labels when the engine can compute one."""

    label: str
    logprob: float
    probs: dict[str, float] | None = None


@runtime_checkable
class LLMEngine(Protocol):
    @property
    def id(self) -> str: ...

    def choose(self, prompts: list[str], choices: list[list[str]], lora: LoRASpec | None = None) -> list[Choice]:
        """For each prompt, pick one of its choices. Deterministic (greedy); output constrained to the choices."""
        ...

    def generate(self, prompts: list[str], max_tokens: int = 64, lora: LoRASpec | None = None) -> list[str]:
        """Free text continuation, greedy."""
        ...

    def shutdown(self) -> None: ...


def preload_adapter(engine: object, lora: LoRASpec) -> None:
    """Load ``lora`` into ``engine`` ahead of use when the engine can (``load_adapter``); engines without it load
    adapters on first use."""
    load = getattr(engine, "load_adapter", None)
    if load is not None:
        load(lora)
