"""Content-addressed cache of generated texts and the artifact it publishes: what makes `mel augment` resumable.

Every generated text (an entity summary, a mention description) has a ``key`` hashing everything it depends on
(:func:`generation_key`: kind, model id and architecture fingerprint, system message, prompt template, max_tokens,
the rendered prompt and, for mentions, the image's content hash). A run looks every key up among the texts it can
find -- the artifact already published at ``out`` (the previous run) and the staging shards of unfinished runs --
and generates only the others. Each finished batch is written at once as a staging shard
``<out>.staging/part-<hash>.parquet`` (temp file + rename), so an interrupted run keeps what it generated.

Artifact directory (assembled in a temp dir and renamed: it appears complete or not at all)::

    manifest.json      written last: kind, format_version, how it was made (model ids, fingerprints, prompt,
                       prompt hash, input content hash, config hash), counts, content_hash, file sizes
    <kind file>        one row per item, in input order: <id column>, <text column>, input_hash, key, model_id
                       (+ the kind's extra columns)

``content_hash`` hashes the rows (order-independent); it names the artifact (an index built from summaries
records it). :func:`read_artifact` refuses another kind, another format version, or rows that do not match it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.atomic import TMP_MARK, write_table_atomic
from mel.errors import ArtifactMismatch, InputError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEY_VERSION = "mel-augment-1"
MANIFEST = "manifest.json"
SHARD_PREFIX = "part-"
BASE_COLUMNS = ("input_hash", "key", "model_id")


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of generated artifact: its name in manifests, its file and its column names."""

    name: str
    file: str
    id_column: str
    text_column: str
    extra_columns: tuple[str, ...] = ()
    """More string columns (may hold nulls), e.g. the image hash of a mention."""
    command: str = "mel augment"
    """The command that rebuilds it (named in error messages)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.id_column, self.text_column, *BASE_COLUMNS, *self.extra_columns)


def text_hash(text: str) -> str:
    """Short content hash of a prompt input (the ``input_hash`` column)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def generation_key(kind: str, *parts: Any) -> str:
    """The cache key of one generation: a hash of ``kind`` and everything the text depends on (JSON-encoded)."""
    blob = json.dumps([KEY_VERSION, kind, *parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def content_hash(kind: ArtifactKind, columns: Mapping[str, Sequence[Any]]) -> str:
    """Order-independent hash of an artifact's rows (every column of ``kind``)."""
    names = kind.columns
    n = len(columns[kind.id_column])
    rows = sorted(json.dumps([columns[c][i] for c in names], ensure_ascii=False) for i in range(n))
    h = hashlib.sha256(json.dumps([kind.name, list(names)]).encode())
    for r in rows:
        h.update(r.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _table(kind: ArtifactKind, columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    import pyarrow as pa

    n = len(columns[kind.id_column])
    for c in kind.columns:
        if c not in columns:
            raise ValueError(f"{kind.name}: column {c!r} missing")
        if len(columns[c]) != n:
            raise ValueError(f"{kind.name}: column {c!r} has {len(columns[c])} rows, expected {n}")
    return pa.table({c: pa.array([None if v is None else str(v) for v in columns[c]], pa.string())
                     for c in kind.columns})


def _columns(table: pa.Table) -> dict[str, list[Any]]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


# ----------------------------------------------------------------------------- reading an artifact
def read_artifact(path: str | Path, kind: ArtifactKind) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(manifest, columns) of a published artifact, checked: InputError when it is missing or unfinished,
    ArtifactMismatch for another kind or format, or rows that differ from the manifest's content hash."""
    import pyarrow.parquet as pq

    d = Path(path)
    hint = f"run `{kind.command} --out {d}`"
    if not d.is_dir():
        raise InputError(f"{kind.name} artifact not found; {hint}", path=str(d))
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise InputError(f"no {MANIFEST}: not a {kind.name} artifact, or its run did not finish; {hint}",
                         path=str(d))
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON: {e}", path=str(mpath)) from None
    if not isinstance(manifest, dict):
        raise InputError("top level must be an object", path=str(mpath))
    if manifest.get("kind") != kind.name:
        raise ArtifactMismatch(f"{d}: a {manifest.get('kind')!r} artifact, expected {kind.name!r}; {hint}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactMismatch(f"{d}: format_version {manifest.get('format_version')!r}, this code reads "
                               f"{FORMAT_VERSION}; {hint}")
    f = d / kind.file
    if not f.is_file():
        raise ArtifactMismatch(f"{d}: {kind.file} is missing; {hint}")
    size = manifest.get("files", {}).get(kind.file)
    if size is not None and size != f.stat().st_size:
        raise ArtifactMismatch(f"{f}: {f.stat().st_size} bytes, the manifest records {size} (damaged); {hint}")
    table = pq.read_table(f)
    missing = [c for c in kind.columns if c not in table.column_names]
    if missing:
        raise ArtifactMismatch(f"{f}: column(s) {missing} missing; {hint}")
    columns = _columns(table)
    got = content_hash(kind, columns)
    if got != manifest.get("content_hash"):
        raise ArtifactMismatch(f"{f}: rows hash to {got}, the manifest records {manifest.get('content_hash')!r} "
                               f"(damaged or edited); {hint}")
    return manifest, columns


# ----------------------------------------------------------------------------- the store of one run
class GenerationStore:
    """The cache and output of one `mel augment` run writing ``out_dir`` (see the module doc)."""

    def __init__(self, out_dir: str | Path, kind: ArtifactKind) -> None:
        self.out = Path(out_dir).absolute()
        self.kind = kind
        self.staging = self.out.with_name(f"{self.out.name}.staging")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the staging directory (a second run writing the same output fails fast)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.staging, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise InputError(f"another run writing {self.out} is in progress (its staging directory is locked)",
                                 path=str(self.staging)) from None
            yield
        finally:
            os.close(fd)

    def known(self, *, clean: bool = True) -> dict[str, dict[str, Any]]:
        """Every row found by key: the published artifact at ``out`` (when it reads back intact) and the staging
        shards (a shard that does not read back is deleted). Row: the kind's columns. ``clean`` also removes the
        temp files of interrupted writes: only for a run holding :meth:`lock` (a shared cache read by several
        writers at once passes False: another writer's temp file is still being written)."""
        import pyarrow.parquet as pq

        rows: dict[str, dict[str, Any]] = {}

        def take(columns: dict[str, list[Any]]) -> None:
            names = [c for c in self.kind.columns if c in columns]
            for i, key in enumerate(columns["key"]):
                rows.setdefault(str(key), {c: columns[c][i] for c in names})

        if (self.out / MANIFEST).is_file():
            try:
                take(read_artifact(self.out, self.kind)[1])
            except (InputError, ArtifactMismatch) as e:
                log.warning("not reusing %s: %s", self.out, e)
        if self.staging.is_dir():
            for f in sorted(self.staging.iterdir()):
                if f.name.startswith(f".{SHARD_PREFIX}") and TMP_MARK in f.name:
                    if clean:
                        f.unlink(missing_ok=True)  # a write interrupted mid-file
                    continue
                if not (f.name.startswith(SHARD_PREFIX) and f.name.endswith(".parquet")):
                    continue
                try:
                    t = pq.read_table(f)
                    if any(c not in t.column_names for c in self.kind.columns):
                        raise ValueError(f"columns {t.column_names}, expected {list(self.kind.columns)}")
                    take(_columns(t))
                except Exception as e:  # noqa: BLE001 -- any unreadable shard is simply generated again
                    log.warning("staged shard %s is not reusable (%s): deleting it", f, e)
                    f.unlink(missing_ok=True)
        return rows

    def add(self, columns: Mapping[str, Sequence[Any]]) -> Path | None:
        """Write one finished batch as a staging shard (named by the hash of its keys); None for no rows."""
        if not len(columns["key"]):
            return None
        table = _table(self.kind, columns)
        tag = hashlib.sha256("\n".join(str(k) for k in columns["key"]).encode()).hexdigest()[:16]
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"{SHARD_PREFIX}{tag}.parquet"
        write_table_atomic(table, path)
        return path

    def publish(self, columns: Mapping[str, Sequence[Any]], manifest: Mapping[str, Any], *,
                keep_staging: bool = False) -> dict[str, Any]:
        """Write the artifact (rows in the given order, then the manifest) atomically to ``out``; remove the
        staging shards unless ``keep_staging``. Returns the manifest written."""
        from mel.atomic import atomic_dir, write_bytes_atomic

        table = _table(self.kind, columns)
        full = {"kind": self.kind.name, "format_version": FORMAT_VERSION, **dict(manifest),
                "rows": table.num_rows, "content_hash": content_hash(self.kind, columns),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with atomic_dir(self.out) as tmp:
            write_table_atomic(table, tmp / self.kind.file)
            full["files"] = {self.kind.file: (tmp / self.kind.file).stat().st_size}
            write_bytes_atomic(tmp / MANIFEST, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
        if keep_staging:
            log.info("staging shards kept in %s", self.staging)
        else:
            shutil.rmtree(self.staging, ignore_errors=True)
        return full
