"""LLM engines: the interface in ``base``, vLLM in ``vllm_engine``, a unit-test double in ``tests/doubles``.

Importing this package is light; vLLM loads when :func:`build_llm_engine` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.llm.base import Choice, LLMEngine, LoRASpec

if TYPE_CHECKING:
    from mel.config import LLMConfig

__all__ = ["Choice", "LLMEngine", "LoRASpec", "build_llm_engine"]


def build_llm_engine(cfg: LLMConfig, cache_dir: str | None = None) -> LLMEngine:
    """A :class:`~mel.llm.vllm_engine.VLLMEngine` for ``cfg`` (starts vLLM: ~25-60 s on CPU).

    Callers that run as scripts need an ``if __name__ == "__main__":`` guard (vLLM spawns its engine process).
    """
    from mel.llm.vllm_engine import VLLMEngine

    return VLLMEngine(cfg, cache_dir)
