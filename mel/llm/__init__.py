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


def merged_adapter_dir(base_dir: str, adapter_dir: str, cache_dir: str, dtype: str) -> str:
    """The cached folder holding ``adapter_dir`` merged into ``base_dir`` (made on first use): keyed by the base
    model's fingerprint, the adapter's weights and config, and the dtype, so a retrained adapter gets a new one."""
    import hashlib
    from pathlib import Path

    from mel.llm.adapters import ADAPTER_WEIGHTS, read_adapter_config
    from mel.models.fingerprint import architecture_fingerprint
    from mel.train.lora import merge_lora_adapter

    read_adapter_config(adapter_dir)
    h = hashlib.sha256(architecture_fingerprint(base_dir).encode() + dtype.encode())
    for name in ("adapter_config.json", *ADAPTER_WEIGHTS):
        p = Path(adapter_dir) / name
        if p.is_file():
            h.update(p.read_bytes())
    out = Path(cache_dir) / "merged-adapters" / f"{Path(adapter_dir).name}-{h.hexdigest()[:16]}"
    if not (out / "config.json").is_file():
        merge_lora_adapter(base_dir, adapter_dir, str(out), dtype="float32", overwrite=True)
    return str(out)


def build_merged_engines(cfg: LLMConfig, adapters: dict[str, str], cache_dir: str | None = None
                         ) -> dict[str, LLMEngine]:
    """One engine per adapter, each serving the base model of ``cfg`` with that adapter merged in (no LoRA path)."""
    from mel.models.sources import default_cache_dir, resolve_model

    cache = cache_dir or default_cache_dir(None)
    base = resolve_model(cfg.model, kind="llm", cache_dir=cache)
    out: dict[str, LLMEngine] = {}
    for name, path in sorted(adapters.items()):
        merged = merged_adapter_dir(base, path, cache, cfg.dtype)
        out[name] = build_llm_engine(cfg.model_copy(update={"model": merged, "enable_lora": False}), cache)
    return out
