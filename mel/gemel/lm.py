"""The frozen causal LM GEMEL generates with, behind a small protocol.

:class:`PrefixLM` is what the constrained beam search needs: run a prompt (optionally preceded by input embeddings
that are not tokens: the mapped image prefix) and return next-token log-probabilities; then extend a set of beams by
one token each, reusing the key/value cache. :class:`HFPrefixLM` implements it with Hugging Face transformers
(``AutoModelForCausalLM``, ``inputs_embeds`` and ``past_key_values``).

Why not vLLM (the engine of ``llm-select``): GEMEL feeds continuous prefix embeddings in front of the tokens and
constrains every step with a trie over ~20k names. vLLM's offline API takes token prompts (embedding inputs and
custom per-step constraints are not part of the CPU path used here), whereas a short own beam loop over
transformers gives exact per-token log-probabilities of the constrained names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mel.errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np
    import torch


@runtime_checkable
class PrefixLM(Protocol):
    """A causal LM that can be prompted with [prefix embeddings] + token ids and stepped beam by beam."""

    @property
    def tokenizer(self) -> Any:
        """Its tokenizer (``encode(text, add_special_tokens=False)``, ``eos_token_id``)."""
        ...

    @property
    def fingerprint(self) -> str:
        """Architecture fingerprint (mel.models.fingerprint) recorded in, and checked against, mappers."""
        ...

    @property
    def hidden_size(self) -> int:
        """Dimension of the input embeddings (what a prefix row must have)."""
        ...

    @property
    def max_positions(self) -> int:
        """Longest sequence (prefix + prompt + generated) the model takes."""
        ...

    def start(self, prompt_ids: list[int], prefix: Any | None = None) -> tuple[Any, np.ndarray]:
        """Run ``[prefix rows] + prompt_ids``; return (state, next-token log-probabilities, shape (vocab,))."""
        ...

    def advance(self, state: Any, parents: list[int], tokens: list[int]) -> tuple[Any, np.ndarray]:
        """New beams: beam ``j`` continues beam ``parents[j]`` of ``state`` with ``tokens[j]``. Returns the new
        state and log-probabilities of each beam's next token, shape (len(tokens), vocab)."""
        ...


@dataclass
class _BeamState:
    cache: Any
    length: int
    beams: int


_DTYPES = ("float32", "bfloat16", "float16")


class HFPrefixLM:
    """:class:`PrefixLM` on a local Hugging Face causal LM folder; every weight frozen (``requires_grad=False``).

    ``model`` (the transformers module), ``tokenizer``, ``fingerprint`` (mel.models.fingerprint of the folder) and
    ``model_dir`` are public: the mapper trainer runs the same module with gradients flowing into the prefix only.
    """

    def __init__(self, model_dir: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        from pathlib import Path

        from mel import compat

        compat.prepare()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mel.models.fingerprint import architecture_fingerprint

        if dtype not in _DTYPES:
            raise ConfigError(f"LLM dtype {dtype!r}: use one of {_DTYPES}")
        path = Path(model_dir).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is not a Hugging Face model folder (no config.json)")
        self.model_dir = str(path)
        self.fingerprint = architecture_fingerprint(path)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir)
        self.model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, dtype))
        self.model.to(device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        cfg = self.model.config
        self._hidden = int(cfg.hidden_size)
        self._max_positions = int(getattr(cfg, "max_position_embeddings", 0) or 2048)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def max_positions(self) -> int:
        return self._max_positions

    @property
    def id(self) -> str:
        return f"hf:{self.model_dir}"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Input embeddings of ``ids``, shape (len(ids), hidden_size) (no gradient: the table is frozen)."""
        import torch

        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(t)

    def start(self, prompt_ids: list[int], prefix: Any | None = None) -> tuple[_BeamState, np.ndarray]:
        import torch

        if not prompt_ids:
            raise InputError("empty prompt")
        with torch.inference_mode():
            emb = self.embed(prompt_ids)
            if prefix is not None:
                pre = torch.as_tensor(prefix).to(device=self.device, dtype=emb.dtype)
                if pre.ndim != 2 or pre.shape[1] != self._hidden:
                    raise InputError(f"prefix must have shape (k, {self._hidden}), got {tuple(pre.shape)}")
                emb = torch.cat([pre, emb], dim=0)
            out = self.model(inputs_embeds=emb[None], use_cache=True, logits_to_keep=1)
            logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu().numpy()
        return _BeamState(out.past_key_values, int(emb.shape[0]), 1), logprobs

    def advance(self, state: _BeamState, parents: list[int], tokens: list[int]) -> tuple[_BeamState, np.ndarray]:
        import torch

        if len(parents) != len(tokens) or not tokens:
            raise ValueError("advance(): parents and tokens must be non-empty and of the same length")
        if any(p < 0 or p >= state.beams for p in parents):
            raise ValueError(f"advance(): parent beam out of range 0..{state.beams - 1}: {parents}")
        with torch.inference_mode():
            cache = state.cache
            if list(parents) != list(range(state.beams)):
                cache.reorder_cache(torch.tensor(parents, dtype=torch.long, device=self.device))
            ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu().numpy()
        return _BeamState(out.past_key_values, state.length + 1, len(tokens)), logprobs
