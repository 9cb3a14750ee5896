"""The index manifest: how an index artifact was made. Written last; its presence marks a complete build."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mel.atomic import write_bytes_atomic
from mel.errors import ArtifactMismatch, InputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
COUNT_KEYS = ("entities", "text_vectors", "image_vectors", "images_missing")
REBUILD_HINT = "rebuild the index with `mel index` using the current configuration, or point to a matching index"


@dataclass
class Manifest:
    encoder_id: str
    """Text encoder identifier (``TextEncoder.id``)."""
    dim: int
    """Text vector dimension."""
    metric: str
    """'ip' or 'l2'."""
    factory: str
    """faiss index factory string (inside the IDMap2 wrapper)."""
    kb_hash: str
    """``KB.content_hash()`` of the KB the index was built from."""
    config_hash: str
    """``Config.hash()`` of the configuration used for the build."""
    entity_template: str
    """Template that rendered the embedded entity text."""
    counts: dict[str, int]
    """entities, text_vectors, image_vectors, images_missing (image files the KB lists that were missing when
    it was read, plus images that could not be decoded)."""
    image_encoder_id: str | None = None
    image_dim: int | None = None
    files: dict[str, int] = field(default_factory=dict)
    """Size in bytes of every file of the artifact (relative path -> bytes), checked on load."""
    version: int = 1
    """Index version: 1 for a full build, the parent's version + 1 for an incremental update."""
    parent: dict[str, Any] | None = None
    """For an update: the index it was made from (``dir``, ``version``, ``kb_hash``) and the ``delta`` file."""
    index_params: dict[str, Any] = field(default_factory=dict)
    """How the text index was made and is searched: resolved factory parameters (nlist, nprobe, hnsw_m,
    ef_search, pq_m, ...), training sample, search shards (file + position range), on-disk lists, device.
    Empty for indexes made before it existed (one text.faiss, searched as it was saved)."""
    summaries: dict[str, Any] | None = None
    """The entity summaries joined into {summary} of the entity template (mel.augment.entity): artifact ``hash``,
    ``path``, ``llm_id``, ``prompt_hash``, entities ``with_summary``, ``missing``, ``stale``; None: none used."""
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REQUIRED = {f.name for f in fields(Manifest)
             if f.name not in ("image_encoder_id", "image_dim", "files", "version", "parent",
                                 "index_params", "summaries")}
_TYPES: dict[str, tuple[type, ...]] = {
    "encoder_id": (str,), "dim": (int,), "metric": (str,), "factory": (str,), "kb_hash": (str,),
    "config_hash": (str,), "entity_template": (str,), "counts": (dict,), "image_encoder_id": (str, type(None)),
    "image_dim": (int, type(None)), "files": (dict,), "format_version": (int,), "created_at": (str,),
    "version": (int,), "parent": (dict, type(None)),
    "index_params": (dict,), "summaries": (dict, type(None)),
}


def manifest_path(index_dir: str | Path) -> Path:
    return Path(index_dir) / MANIFEST


def read_manifest(index_dir: str | Path) -> Manifest:
    """Read and validate ``<index_dir>/manifest.json``.

    Raises InputError when the directory or the manifest is missing or malformed (a missing manifest
    means the directory is not an index, or its build never finished), ArtifactMismatch for a format
    version this code does not read.
    """
    d = Path(index_dir)
    if not d.is_dir():
        raise InputError("index directory not found; build one with `mel index`", path=str(d))
    p = d / MANIFEST
    if not p.is_file():
        raise InputError(f"no {MANIFEST}: not an index directory, or its build did not finish; "
                         "rebuild it with `mel index`", path=str(d))
    from mel.fileio import read_json_object

    data = read_json_object(p)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactMismatch(f"{p}: index format_version is {version!r}, this code reads {FORMAT_VERSION}; "
                               "rebuild the index with `mel index`")
    missing = sorted(_REQUIRED - data.keys())
    if missing:
        raise InputError(f"missing {', '.join(missing)}", path=str(p), field=missing[0])
    unknown = sorted(data.keys() - _TYPES.keys())
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}", path=str(p), field=unknown[0])
    for name, value in data.items():
        ok = _TYPES[name]
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            raise InputError(f"expected {' or '.join(t.__name__ for t in ok)}, got {type(value).__name__}",
                             path=str(p), field=name)
    bad_files = [k for k, v in data.get("files", {}).items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad_files:
        raise InputError("files must map relative paths to sizes in bytes", path=str(p), field=f"files.{bad_files[0]}")
    bad_counts = [k for k in COUNT_KEYS if not isinstance(data["counts"].get(k), int)]
    if bad_counts:
        raise InputError(f"counts must hold integers {', '.join(COUNT_KEYS)}", path=str(p),
                         field=f"counts.{bad_counts[0]}")
    return Manifest(**data)


def write_manifest(index_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename). Call it last, after every other file."""
    p = manifest_path(index_dir)
    write_bytes_atomic(p, (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return p


def check_compatible(manifest: Manifest, *, encoder_id: str | None, dim: int | None, metric: str | None,
                     image_encoder_id: str | None = None, where: str | Path | None = None) -> None:
    """Refuse an index made with settings other than the configured ones (``None`` skips a check).

    ``image_encoder_id`` given: the index must hold image vectors made by that encoder.
    Raises ArtifactMismatch naming the field, the index value, the configured value and the fix.
    """
    prefix = f"index {where}: " if where is not None else "index: "
    checks: list[tuple[str, str, object, object]] = [
        ("encoder_id", "text encoder", manifest.encoder_id, encoder_id),
        ("dim", "text vector dimension", manifest.dim, dim),
        ("metric", "metric", manifest.metric, metric),
    ]
    for name, what, have, want in checks:
        if want is not None and have != want:
            raise ArtifactMismatch(f"{prefix}{what} differs (manifest field '{name}'): the index was built with "
                                   f"{have!r}, the configuration uses {want!r}; {REBUILD_HINT}")
    if image_encoder_id is not None and manifest.image_encoder_id != image_encoder_id:
        have = manifest.image_encoder_id
        detail = "has no image vectors" if have is None else f"was built with image encoder {have!r}"
        raise ArtifactMismatch(f"{prefix}image encoder differs (manifest field 'image_encoder_id'): the index "
                               f"{detail}, the configuration uses {image_encoder_id!r}; {REBUILD_HINT}")


def index_id(manifest: Manifest) -> str:
    """A short identity of one built index: what it was built from and with, and when (two builds of the same KB
    are two indexes). Artifacts made against an index (NIL calibrations) record it and are refused for another."""
    import hashlib

    key = {k: getattr(manifest, k) for k in ("encoder_id", "dim", "metric", "factory", "kb_hash", "config_hash",
                                              "entity_template", "counts", "image_encoder_id", "version",
                                              "created_at")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
