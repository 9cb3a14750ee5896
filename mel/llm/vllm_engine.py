"""LLM engine on vLLM's offline API (``vllm.LLM``), CPU or GPU.

- ``choose()``: greedy decoding constrained to the offered labels (structured outputs, ``choice=[...]``). When
  every label is a single token (``"A"``..``"Z"``), the first step's top log-probabilities give a normalised
  distribution over the labels (``Choice.probs``): a calibrated confidence for the selector.
- Per-request LoRA adapters (peft folders) via ``LoRARequest``; one stable integer id per adapter folder
  version, checked (rank, modules_to_save, base model) before vLLM sees it.
- Memory is always bounded from config: on CPU vLLM otherwise reserves ~92% of RAM for the KV cache.

vLLM starts its engine in a separate (spawned) process: scripts that build a ``VLLMEngine`` need an
``if __name__ == "__main__":`` guard. The first build takes ~25-60 s on CPU; share one engine per process.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import ConfigError, InputError
from mel.llm.adapters import adapter_version, check_lora_adapter
from mel.llm.base import Choice, LoRASpec

if TYPE_CHECKING:
    from mel.config import LLMConfig

log = logging.getLogger(__name__)

GiB = 1 << 30
MAX_LOGPROBS = 32
"""Top log-probabilities the engine may return per token (labels beyond this get probability 0)."""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMEngine:
    """Implements :class:`mel.llm.base.LLMEngine` with ``vllm.LLM``."""

    def __init__(self, cfg: LLMConfig, cache_dir: str | None = None, *, model_path: str | None = None) -> None:
        from mel import compat

        compat.prepare()  # also makes vLLM's child processes apply the torchvision fix
        from mel.models.fingerprint import architecture_fingerprint
        from mel.models.sources import model_id, resolve_model

        if cfg.enable_lora and cfg.max_lora_rank not in VLLM_LORA_RANKS:
            raise ConfigError(f"models.llm.max_lora_rank: vLLM accepts one of {VLLM_LORA_RANKS}, "
                              f"got {cfg.max_lora_rank}")
        self.cfg = cfg
        self.model_path = model_path or resolve_model(cfg.model, kind="llm", cache_dir=cache_dir)
        self._id = f"vllm:{model_id(cfg.model, self.model_path)}:{cfg.dtype}"
        self._fingerprint = architecture_fingerprint(self.model_path)
        self._lora_ids: dict[tuple[str, int], int] = {}

        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = dict(
            model=self.model_path, tokenizer=self.model_path, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
            max_logprobs=MAX_LOGPROBS,
        )
        if cfg.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=cfg.max_loras)
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * GiB)
            env_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
            if env_space:
                log.warning("VLLM_CPU_KVCACHE_SPACE=%s in the environment overrides models.llm.kv_cache_gb=%s",
                            env_space, cfg.kv_cache_gb)
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        t0 = time.perf_counter()
        self._llm: Any = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        self._tokenizer: Any = self._llm.get_tokenizer()
        log.info("vLLM engine for %s ready in %.1f s", self.model_path, self.start_seconds)

    # ------------------------------------------------------------------ LLMEngine
    @property
    def id(self) -> str:
        return self._id

    @property
    def fingerprint(self) -> str:
        """Architecture fingerprint of the served model (mel.models.fingerprint)."""
        return self._fingerprint

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def format_chat(self, system: str | None, user: str) -> str:
        """The prompt text for one chat turn, with the model's chat template and the assistant turn opened."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def choose(self, prompts: list[str], choices: list[list[str]], lora: LoRASpec | None = None) -> list[Choice]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self._check_open()
        if len(prompts) != len(choices):
            raise InputError(f"choose(): {len(prompts)} prompts but {len(choices)} choice lists")
        if not prompts:
            return []
        params = []
        label_tokens: list[dict[str, int] | None] = []
        for i, labels in enumerate(choices):
            _check_labels(i, labels)
            ids = [self._tokenizer.encode(lab, add_special_tokens=False) for lab in labels]
            single = all(len(t) == 1 for t in ids) and len({t[0] for t in ids}) == len(ids)
            label_tokens.append({lab: t[0] for lab, t in zip(labels, ids, strict=True)} if single else None)
            params.append(SamplingParams(
                temperature=0.0, max_tokens=max(len(t) for t in ids) + 1,
                # top-k of the first step for label probabilities; 0 still yields cumulative_logprob
                logprobs=min(MAX_LOGPROBS, max(20, len(labels))) if single else 0,
                structured_outputs=StructuredOutputsParams(choice=list(labels)),
            ))
        self._check_lengths(prompts, [p.max_tokens or 1 for p in params])
        outputs = self._llm.generate(list(prompts), params, use_tqdm=False, lora_request=self._lora_request(lora))
        results = []
        for i, (out, labels, tokens) in enumerate(zip(outputs, choices, label_tokens, strict=True)):
            comp = out.outputs[0]
            label = comp.text.strip()
            if label not in labels:
                raise RuntimeError(f"choose(): prompt {i}: the engine returned {comp.text!r}, not one of {labels} "
                                   "(structured output constraint not applied?)")
            probs = _label_probs(comp.logprobs[0], tokens) if tokens is not None and comp.logprobs else None
            logprob = comp.cumulative_logprob
            if logprob is None or not math.isfinite(logprob):
                logprob = math.log(probs[label]) if probs and probs[label] > 0 else float("-inf")
            results.append(Choice(label=label, logprob=float(logprob), probs=probs))
        return results

    def generate(self, prompts: list[str], max_tokens: int = 64, lora: LoRASpec | None = None) -> list[str]:
        from vllm import SamplingParams

        self._check_open()
        if max_tokens < 1:
            raise InputError(f"generate(): max_tokens must be >= 1, got {max_tokens}")
        if not prompts:
            return []
        self._check_lengths(prompts, [max_tokens] * len(prompts))
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        outputs = self._llm.generate(list(prompts), params, use_tqdm=False, lora_request=self._lora_request(lora))
        return [o.outputs[0].text for o in outputs]

    def shutdown(self) -> None:
        """Stop the engine process and free its memory (idempotent)."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 -- best effort: the process may already be gone
            log.warning("vLLM engine shutdown raised", exc_info=True)
        del llm
        import gc

        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._llm is None:
            raise RuntimeError("the vLLM engine was shut down")

    def _check_lengths(self, prompts: list[str], max_new: list[int]) -> None:
        for i, (p, n) in enumerate(zip(prompts, max_new, strict=True)):
            if not isinstance(p, str):
                raise InputError(f"prompt {i} is {type(p).__name__}, expected str")
            length = len(self._tokenizer.encode(p))
            if length + n > self.cfg.max_model_len:
                raise InputError(f"prompt {i} has {length} tokens; with {n} new tokens it exceeds "
                                 f"models.llm.max_model_len={self.cfg.max_model_len}")

    def load_adapter(self, lora: LoRASpec) -> None:
        """Check ``lora`` against this engine (rank, base model) and load its weights now, so the first request
        naming it does not pay for the load (a replica's multiplexed adapter load calls this)."""
        self._check_open()
        self._llm.llm_engine.add_lora(self._lora_request(lora))

    def _lora_request(self, lora: LoRASpec | None) -> Any:
        if lora is None:
            return None
        if not self.cfg.enable_lora:
            raise ConfigError(f"LoRA adapter {lora.name!r} requested but models.llm.enable_lora is false")
        from vllm.lora.request import LoRARequest

        path = str(Path(lora.path).expanduser().resolve())
        key = (path, adapter_version(path))
        if key not in self._lora_ids:
            check_lora_adapter(path, max_rank=self.cfg.max_lora_rank, base_fingerprint=self._fingerprint)
            self._lora_ids[key] = len(self._lora_ids) + 1
        return LoRARequest(lora.name, self._lora_ids[key], path)


def _check_labels(i: int, labels: list[str]) -> None:
    if isinstance(labels, str) or not labels:
        raise InputError(f"choose(): prompt {i}: choices must be a non-empty list of labels, got {labels!r}")
    if any(not isinstance(lab, str) or not lab.strip() or lab != lab.strip() for lab in labels):
        raise InputError(f"choose(): prompt {i}: labels must be non-empty strings without surrounding spaces: "
                         f"{labels!r}")
    if len(set(labels)) != len(labels):
        raise InputError(f"choose(): prompt {i}: duplicate labels in {labels!r}")


def _label_probs(first_step: Any, tokens: dict[str, int]) -> dict[str, float] | None:
    """Softmax over the labels' first-token log-probabilities (labels outside the returned top-k get 0)."""
    lps = {}
    for label, tok in tokens.items():
        entry = first_step.get(tok) if hasattr(first_step, "get") else None
        lp = getattr(entry, "logprob", None)
        if lp is not None and math.isfinite(lp):
            lps[label] = float(lp)
    if not lps:
        return None
    top = max(lps.values())
    weights = {label: math.exp(lps[label] - top) if label in lps else 0.0 for label in tokens}
    total = sum(weights.values())
    return {label: w / total for label, w in weights.items()}
