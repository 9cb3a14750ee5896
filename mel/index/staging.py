"""Content-addressed embedding shards kept between build attempts: what makes `mel index` resumable.

The rows a build embeds (entity texts by position; entity images by image row) are cut into fixed ranges
``[k * shard_rows, (k + 1) * shard_rows)``. The shard of range ``k`` is ``<kind>-<k:05d>-<key>.parquet`` in the
staging directory, where ``key`` hashes everything its vectors depend on: the kind, the encoder id and dim, the
entity template (text shards), the range bounds and, row by row, the input (entity id + embedded text; image
owner + entity id + path + file size and mtime). A rerun reuses every shard whose key matches and that reads
back complete, and embeds only the other ranges. A shard made by another encoder, or for other KB content,
has another key: it is never read, and it is deleted when the build starts. A shard is written to a temp file
and renamed, so a crash mid-write leaves nothing that could be reused.

Ray Data returns batches in any order: :class:`ShardWriter` buffers rows per range and writes a range's shard
as soon as all its rows have arrived.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mel.atomic import TMP_MARK, write_table_atomic
from mel.errors import ArtifactMismatch, InputError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

TEXT, IMAGE = "text", "image"
ROW_COLUMN = {TEXT: "position", IMAGE: "row"}
"""The column numbering a shard's rows (text: the entity position; image: the image row of ``image_rows``)."""
COLUMNS: dict[str, tuple[str, ...]] = {
    TEXT: ("entity_id", "position"),
    IMAGE: ("row", "owner", "entity_id", "image", "stamp", "ok"),
}
"""Columns of each shard kind besides ``vector``. Image shards keep unreadable images as rows with ok=false
(and a zero vector), so that a reused shard still accounts for them."""
_INT_COLUMNS = {"position", "row", "owner"}
ENCODER_KEY = b"mel.encoder_id"
SHARD_KEY = b"mel.shard_key"
RANGE_KEY = b"mel.shard_range"
KEY_VERSION = "mel-shard-1"


# ----------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class ShardRange:
    """Rows ``[start, stop)`` of one kind; ``key`` names their content (see the module doc)."""

    index: int
    start: int
    stop: int
    key: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


def text_fingerprints(entity_ids: Sequence[str], texts: Sequence[str]) -> list[str]:
    """What a text vector depends on, per position: the entity id and its embedded text."""
    return [json.dumps([i, t], ensure_ascii=False) for i, t in zip(entity_ids, texts, strict=True)]


def image_stamp(path: str) -> str:
    """``"<size>:<mtime_ns>"`` of an image file (``"missing"`` when it cannot be stat'ed): a changed file
    gets a new stamp, so its vector is not reused."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def image_fingerprints(owners: Sequence[int], entity_ids: Sequence[str], paths: Sequence[str],
                       stamps: Sequence[str]) -> list[str]:
    """What an image vector depends on, per image row: owner position, entity id, path and file stamp."""
    return [json.dumps([int(o), i, p, s], ensure_ascii=False)
            for o, i, p, s in zip(owners, entity_ids, paths, stamps, strict=True)]


def plan_ranges(kind: str, fingerprints: Sequence[str], shard_rows: int, *, encoder_id: str, dim: int,
                salt: str = "") -> list[ShardRange]:
    """Cut ``len(fingerprints)`` rows into fixed ranges of ``shard_rows`` and compute each range's key.

    ``salt`` is mixed into every key (the entity template for text shards).
    """
    _check_kind(kind)
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    head = json.dumps([KEY_VERSION, kind, encoder_id, int(dim), salt], ensure_ascii=False).encode()
    out = []
    for k, start in enumerate(range(0, len(fingerprints), shard_rows)):
        stop = min(start + shard_rows, len(fingerprints))
        h = hashlib.sha256(head)
        h.update(f"\n{start}:{stop}\n".encode())
        for fp in fingerprints[start:stop]:
            h.update(fp.encode())
            h.update(b"\n")
        out.append(ShardRange(k, start, stop, h.hexdigest()[:32]))
    return out


def _check_kind(kind: str) -> None:
    if kind not in (TEXT, IMAGE):
        raise ValueError(f"shard kind must be {TEXT!r} or {IMAGE!r}, got {kind!r}")


# ----------------------------------------------------------------------------- store
class ShardStore:
    """The shards of one kind for one build in a staging directory (persistent across attempts)."""

    def __init__(self, directory: str | Path, kind: str, ranges: Sequence[ShardRange], encoder_id: str,
                 dim: int) -> None:
        _check_kind(kind)
        self.dir = Path(directory)
        self.kind, self.ranges, self.encoder_id, self.dim = kind, list(ranges), encoder_id, int(dim)

    def file(self, r: ShardRange) -> Path:
        return self.dir / f"{self.kind}-{r.index:05d}-{r.key}.parquet"

    def files(self) -> list[Path]:
        """Every range's shard file, in row order (they all exist once the build's shards are complete)."""
        return [self.file(r) for r in self.ranges]

    def scan(self, *, resume: bool = True) -> list[ShardRange]:
        """The ranges whose shard is already complete (reused); deletes every other file of this kind.

        ``resume=False`` deletes them all (a fresh start). A shard whose key matches but that does not read
        back complete (damaged) is deleted and embedded again.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = {self.file(r).name for r in self.ranges} if resume else set()
        for f in self.dir.iterdir():
            stale = f.name.startswith(f"{self.kind}-") and f.name.endswith(".parquet") and f.name not in wanted
            if stale or (f.name.startswith(f".{self.kind}-") and TMP_MARK in f.name):
                f.unlink(missing_ok=True)
        if not resume:
            return []
        done = []
        for r in self.ranges:
            f = self.file(r)
            if not f.is_file():
                continue
            problem = self._check_file(f, r)
            if problem is None:
                done.append(r)
            else:
                log.warning("staged shard %s is not reusable (%s): embedding its rows again", f, problem)
                f.unlink(missing_ok=True)
        return done

    def _check_file(self, f: Path, r: ShardRange) -> str | None:
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(f)
        except Exception as e:  # noqa: BLE001 -- any unreadable file is simply not reused
            return f"unreadable: {e}"
        meta = t.schema.metadata or {}
        if meta.get(SHARD_KEY, b"").decode() != r.key or meta.get(ENCODER_KEY, b"").decode() != self.encoder_id:
            return "its recorded key or encoder differs from its name"
        if t.num_rows != r.rows:
            return f"{t.num_rows} rows, expected {r.rows}"
        rows = t.column(ROW_COLUMN[self.kind]).to_numpy()
        if not np.array_equal(rows, np.arange(r.start, r.stop)):
            return "its rows are not the range it names"
        if t.column("vector").type.list_size != self.dim:
            return f"vectors of dim {t.column('vector').type.list_size}, expected {self.dim}"
        return None

    def writer(self, ranges: Iterable[ShardRange]) -> ShardWriter:
        """A writer that fills the given (missing) ranges."""
        return ShardWriter(self, ranges)

    def remove(self) -> None:
        """Delete this kind's shard files (and the staging dir once it is empty)."""
        for f in self.files():
            f.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


class ShardWriter:
    """Buffers embedded rows per range and writes a range's shard (temp file + rename) once it is complete.

    ``add`` takes columns (see :data:`COLUMNS`, plus ``vector`` (n, dim)) for rows in any order, from any
    batch; a row outside the ranges being filled, or a row given twice, is an error. ``close`` checks that
    every range was written.
    """

    def __init__(self, store: ShardStore, ranges: Iterable[ShardRange]) -> None:
        self.store = store
        self.kind = store.kind
        self.todo: dict[int, ShardRange] = {r.index: r for r in ranges}
        self._starts = np.array(sorted(r.start for r in self.todo.values()), dtype=np.int64)
        self._by_start = {r.start: r for r in self.todo.values()}
        self._parts: dict[int, list[dict[str, Any]]] = {}
        self._have: dict[int, int] = {}
        self.files: list[Path] = []
        self.rows = 0

    def add(self, columns: Mapping[str, Any]) -> None:
        vec = np.asarray(columns["vector"], dtype=np.float32)
        rows = np.asarray(columns[ROW_COLUMN[self.kind]], dtype=np.int64)
        if vec.ndim != 2 or vec.shape != (len(rows), self.store.dim):
            raise ValueError(f"{self.kind} shard: {len(rows)} rows need vectors of shape ({len(rows)}, "
                             f"{self.store.dim}), got {vec.shape}")
        if not len(rows):
            return
        slot = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(slot).tolist():
            sel = np.flatnonzero(slot == s)
            r = self._by_start.get(int(self._starts[s])) if s >= 0 else None
            if r is None or r.index not in self.todo or rows[sel].max() >= r.stop:
                bad = int(rows[sel][0])
                raise RuntimeError(f"{self.kind} row {bad} is not in a shard range being written")
            part = {k: _take(columns[k], sel) for k in COLUMNS[self.kind]}
            part["vector"] = vec[sel]
            self._parts.setdefault(r.index, []).append(part)
            self._have[r.index] = self._have.get(r.index, 0) + len(sel)
            if self._have[r.index] > r.rows:
                raise RuntimeError(f"{self.kind} shard {r.index}: more rows than its range {r.start}..{r.stop - 1}")
            if self._have[r.index] == r.rows:
                self._write(r, self._parts.pop(r.index))
                del self.todo[r.index]
        self.rows += len(rows)

    def close(self) -> list[Path]:
        if self.todo:
            r = next(iter(self.todo.values()))
            raise RuntimeError(f"{len(self.todo)} {self.kind} shard range(s) incomplete, e.g. rows "
                               f"{r.start}..{r.stop - 1} got {self._have.get(r.index, 0)} of {r.rows} rows")
        return self.files

    def _write(self, r: ShardRange, parts: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        cols = {k: np.concatenate([p[k] for p in parts]) for k in COLUMNS[self.kind]}
        vecs = np.concatenate([p["vector"] for p in parts])
        rows = cols[ROW_COLUMN[self.kind]].astype(np.int64)
        order = np.argsort(rows, kind="stable")
        if not np.array_equal(rows[order], np.arange(r.start, r.stop)):
            raise RuntimeError(f"{self.kind} shard {r.index}: rows are not exactly {r.start}..{r.stop - 1} "
                               "(a row was given twice)")
        arrays: dict[str, pa.Array] = {}
        for k in COLUMNS[self.kind]:
            v = cols[k][order]
            if k in _INT_COLUMNS:
                arrays[k] = pa.array(v.astype(np.int64), pa.int64())
            elif k == "ok":
                arrays[k] = pa.array(v.astype(bool), pa.bool_())
            else:
                arrays[k] = pa.array([str(x) for x in v], pa.string())
        flat = pa.array(np.ascontiguousarray(vecs[order], dtype=np.float32).reshape(-1), pa.float32())
        arrays["vector"] = pa.FixedSizeListArray.from_arrays(flat, self.store.dim)
        table = pa.table(arrays).replace_schema_metadata({
            ENCODER_KEY: self.store.encoder_id.encode(), SHARD_KEY: r.key.encode(),
            RANGE_KEY: f"{r.start}:{r.stop}".encode()})
        path = self.store.file(r)
        write_table_atomic(table, path)
        self.files.append(path)


def _take(values: Any, sel: np.ndarray) -> np.ndarray:
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    return arr[sel]


# ----------------------------------------------------------------------------- staging directory
def staging_dir_for(out_dir: str | Path, staging_root: str | None = None) -> Path:
    """Where the shards of the build of ``out_dir`` are kept between attempts.

    ``<out>.staging`` beside the output (same filesystem, so shards are hard-linked into the index), or, when
    ``staging_root`` is set, ``<staging_root>/<out name>-<hash of the absolute output path>``.
    """
    out = Path(out_dir).absolute()
    if staging_root is None:
        return out.with_name(f"{out.name}.staging")
    tag = hashlib.sha256(str(out).encode()).hexdigest()[:10]
    return Path(staging_root).expanduser().absolute() / f"{out.name}-{tag}"


@contextmanager
def staging_lock(staging: Path) -> Iterator[None]:
    """Hold an exclusive lock on a staging directory for a build (a second build of the same output fails fast
    instead of deleting the first one's shards)."""
    import fcntl

    staging.mkdir(parents=True, exist_ok=True)
    fd = os.open(staging, os.O_RDONLY)  # flock on the directory itself: no lock file among the shards
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError("another build of the same index is running (its staging directory is locked)",
                             path=str(staging)) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def link_files(files: Iterable[Path], dest_dir: Path) -> None:
    """Hard-link (or copy, across filesystems) ``files`` into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = dest_dir / f.name
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def count_unreadable(image_shards: Iterable[Path]) -> int:
    """Image rows the shards mark unreadable (ok = false)."""
    import pyarrow.parquet as pq

    return sum(int((~pq.read_table(f, columns=["ok"]).column("ok").to_numpy(zero_copy_only=False)).sum())
               for f in image_shards)


def check_single_encoder(seen: Iterable[str], expected: str, what: str) -> None:
    """Refuse vectors from an encoder other than the one the shard keys were computed for."""
    other = sorted(set(seen) - {expected})
    if other:
        raise ArtifactMismatch(f"{what} vectors came from encoder(s) {other}, the shards are keyed for "
                               f"{expected!r}; refusing to mix encoders in one index")
