"""A short fingerprint of a Hugging Face model folder's architecture, recorded in LoRA adapters so engines
can refuse an adapter trained on a different base model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mel.errors import ModelNotFound

_FIELDS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")


def architecture_fingerprint(model_dir: str | Path) -> str:
    """Hash of the architecture fields of ``<model_dir>/config.json`` (weights and dtype do not enter it)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"{path}: cannot read the model config: {e}") from e
    picked = {k: config.get(k) for k in _FIELDS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
