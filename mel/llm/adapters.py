"""LoRA adapter folders (peft format): the checks an engine runs before loading one.

``mel.train.lora.save_lora_adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` (peft) and
``mel_adapter.json`` (how it was made, including the base model's architecture fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mel.errors import ArtifactMismatch, InputError

ADAPTER_META = "mel_adapter.json"
"""File in an adapter folder recording how it was made (see mel.train.lora)."""
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    cfg_path = p / "adapter_config.json"
    if not p.is_dir():
        raise InputError(f"LoRA adapter {p} is not a directory")
    if not cfg_path.is_file():
        raise InputError(f"LoRA adapter {p} has no adapter_config.json (expected a peft save_pretrained folder)")
    if not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
        raise InputError(f"LoRA adapter {p} has no {ADAPTER_WEIGHTS[0]}")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}", path=str(cfg_path), line=e.lineno) from e


def read_adapter_meta(path: str | Path) -> dict[str, Any] | None:
    """The adapter's ``mel_adapter.json`` (how it was made), or None for an adapter made elsewhere."""
    meta_path = Path(path) / ADAPTER_META
    if not meta_path.is_file():
        return None
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}", path=str(meta_path), line=e.lineno) from e


def check_lora_adapter(path: str | Path, *, max_rank: int, base_fingerprint: str | None = None) -> dict[str, Any]:
    """Refuse adapters an engine cannot serve: rank above ``max_rank``, ``modules_to_save`` (full layers vLLM
    does not load), or a different base model (when both fingerprints are known). Returns the adapter config."""
    cfg = read_adapter_config(path)
    rank = int(cfg.get("r", 0))
    if rank > max_rank:
        raise ArtifactMismatch(f"LoRA adapter {path}: rank {rank} exceeds the engine's max_lora_rank {max_rank}; "
                               "raise models.llm.max_lora_rank or retrain with a smaller rank")
    if cfg.get("modules_to_save"):
        raise ArtifactMismatch(f"LoRA adapter {path}: modules_to_save={cfg['modules_to_save']} is not supported by "
                               "vLLM; retrain without modules_to_save")
    meta = read_adapter_meta(path) if base_fingerprint is not None else None
    if meta is not None:
        made_for = meta.get("base_fingerprint")
        if made_for is not None and made_for != base_fingerprint:
            raise ArtifactMismatch(
                f"LoRA adapter {path} was trained on base model {meta.get('base_model', '?')} "
                f"(architecture {made_for}), but the engine serves architecture {base_fingerprint}; "
                "use an adapter trained on this base model")
    return cfg


def adapter_version(path: str | Path) -> int:
    """Modification time (ns) of the adapter's weights: changes when the folder is replaced by a retrained one."""
    p = Path(path)
    for w in ADAPTER_WEIGHTS:
        if (p / w).is_file():
            return (p / w).stat().st_mtime_ns
    return 0


def check_adapters_for_index(adapters: dict[str, str], kb_hash: str, *, index_dir: str = "") -> None:
    """Refuse, before serving or linking, a configured adapter trained on another KB than the index serves (its
    ``mel_adapter.json`` records the KB hash; adapters without one, e.g. made by hand, pass). The message names
    the adapter and the fix."""
    for name, path in sorted(adapters.items()):
        meta = read_adapter_meta(path)
        if meta is None:
            continue
        trained_on = meta.get("kb_hash")
        if trained_on is not None and trained_on != kb_hash:
            raise ArtifactMismatch(
                f"adapter {name!r} ({path}) was trained for KB {trained_on}, but the index {index_dir or ''} serves "
                f"KB {kb_hash}; retrain it with `mel train selector --index <this index> ...` or serve the index "
                "it was trained with")
