"""Convert a GGUF checkpoint to a plain Hugging Face folder once, cached under ``<cache>/models``.

vLLM (and peft) load plain HF folders fast and reliably; transformers can read GGUF (dequantising it), which
takes ~40-50 s for SmolLM2-135M on 2 CPU cores, so it is done once and the folder reused.

Two traps handled here:

- transformers keeps a GGUF ``quantization_config`` (and an ``hf_quantizer``) on the model it loaded from
  GGUF, although the weights are already dequantised; saved as is, the folder would claim to be GGUF-quantised.
  The marker is removed before saving, so the folder is a plain ``dtype`` model.
- transformers 5 stores RoPE settings only under ``rope_parameters``; ``rope_theta`` is written into
  ``config.json`` explicitly (from the loaded config, else the GGUF metadata) for loaders that read it there.

The folder is written to a temporary sibling and renamed into place, so it appears only when complete. Its
``mel_conversion.json`` records the source file's hash, the dtype and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mel.errors import ArtifactMismatch, ModelNotFound

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Bump when the conversion output changes; older cached folders are then rebuilt (new folder name)."""
MANIFEST = "mel_conversion.json"
DEFAULT_DTYPE = "float32"
"""Stored precision of converted folders: float32 keeps the dequantised weights exact; engines cast on load."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def converted_dir(gguf_path: str | Path, cache_dir: str | Path, *, dtype: str = DEFAULT_DTYPE,
                  sha256: str | None = None) -> Path:
    """Where the converted folder for ``gguf_path`` lives (content-addressed: name + hash of file and settings)."""
    sha256 = sha256 or file_sha256(gguf_path)
    key = hashlib.sha256(f"{sha256}:{dtype}:{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    name = Path(gguf_path).name.removesuffix(".gguf")
    return Path(cache_dir) / "models" / f"{name}-{key}"


def gguf_metadata(gguf_path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Scalar metadata fields of a GGUF file (token tables are skipped)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if keys is not None and name not in keys:
            continue
        if name.startswith("tokenizer.ggml.") and name.split(".")[-1] in ("tokens", "token_type", "merges", "scores"):
            continue
        try:
            out[name] = field.contents()
        except Exception:  # noqa: BLE001 -- a field gguf cannot decode is not needed
            continue
    return out


def _rope_theta(config: Any, gguf_path: str | Path) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    if getattr(config, "rope_theta", None) is not None:
        return float(config.rope_theta)
    meta = gguf_metadata(gguf_path)
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.rope.freq_base")
    return float(value) if value is not None else None


def _check_converted(path: Path, sha256: str, dtype: str) -> None:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactMismatch(f"{path}: no {MANIFEST}; it is not a finished conversion -- delete the folder")
    m = json.loads(manifest_path.read_text())
    if m.get("source_sha256") != sha256 or m.get("dtype") != dtype or m.get("converter_version") != CONVERTER_VERSION:
        raise ArtifactMismatch(
            f"{path}: made from source {m.get('source_sha256', '?')[:12]} dtype {m.get('dtype')} converter "
            f"v{m.get('converter_version')}, expected {sha256[:12]} {dtype} v{CONVERTER_VERSION} -- delete the folder")


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path, *, dtype: str = DEFAULT_DTYPE) -> str:
    """Return a plain HF folder for ``gguf_path`` (converting on first use). Safe against concurrent callers."""
    src = Path(gguf_path)
    if not src.is_file():
        raise ModelNotFound(f"GGUF file {src} does not exist")
    sha = file_sha256(src)
    out = converted_dir(src, cache_dir, dtype=dtype, sha256=sha)
    if out.is_dir():
        _check_converted(out, sha, dtype)
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _convert_into(src, tmp, dtype=dtype, sha256=sha)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MANIFEST).is_file():  # not a concurrent converter winning the race
                raise
            log.info("another process converted %s first; using its folder", src.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _check_converted(out, sha, dtype)
    return str(out)


def _convert_into(src: Path, dst: Path, *, dtype: str, sha256: str) -> None:
    from mel import compat

    compat.prepare()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating dtype (use 'bfloat16', 'float16' or 'float32')")
    t0 = time.perf_counter()
    log.info("converting %s to a %s Hugging Face folder (once; ~1 min on CPU)", src.name, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # Dequantise in float32 (exact), then cast once to the target dtype.
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # The weights are dequantised, but the model still says it is GGUF-quantised: clear that marker.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model = model.to(torch_dtype)
    bad = {str(p.dtype) for p in model.parameters() if p.dtype != torch_dtype}
    if bad:
        raise RuntimeError(f"{src.name}: parameters still hold {sorted(bad)} after dequantisation; cannot save "
                           f"a plain {dtype} model with transformers {transformers.__version__}")
    rope_theta = _rope_theta(model.config, src)
    model.save_pretrained(str(dst))
    tokenizer.save_pretrained(str(dst))

    config_path = dst / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    if rope_theta is not None:
        config["rope_theta"] = rope_theta
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    dst.chmod(0o755)  # mkdtemp makes 0700 and safetensors are written 0600; keep the cache readable like others
    for f in dst.iterdir():
        f.chmod(0o644)
    manifest = {
        "source": str(src),
        "source_sha256": sha256,
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "rope_theta": rope_theta,
        "seconds": round(time.perf_counter() - t0, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("converted %s in %.1f s", src.name, manifest["seconds"])
