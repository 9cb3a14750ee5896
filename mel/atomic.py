"""The one way this project writes output that something else will read: it appears complete or not at all.

Files are written to a temp file beside the target (same filesystem), flushed and fsynced, then renamed onto it;
directories are filled in a temp sibling and renamed into place (an existing one moved aside first, then removed).
On any error, KeyboardInterrupt included, the temp file or directory is removed and the target left as it was.
Temp names start with ``.<name>`` and contain :data:`TMP_MARK`, so a crashed writer's leftovers are recognisable.
Light: standard library only (Parquet writing imports pyarrow when called).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is fsynced and renamed onto ``path``, on
    error removed. Parent directories are created."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.exists():
            _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically. Returns the number of records written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False))
            f.write("\n")
            n += 1
    return n


def write_table_atomic(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file atomically."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir next to ``final_path`` (``.<name>.tmp-<uuid>``); fill it inside the block.

    On success the temp dir is renamed to ``final_path`` (an existing ``final_path`` is first moved aside,
    then removed). On any exception, KeyboardInterrupt included, the temp dir is removed and
    ``final_path`` is left as it was. The temp dir is a sibling so that the rename stays on one filesystem.
    """
    final = Path(final_path).absolute()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = final.with_name(f".{final.name}{TMP_MARK}{tag}")
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, final, tag=tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: str | Path, final: str | Path, *, tag: str | None = None) -> None:
    """Rename the finished directory ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed
    after, and put back if the rename fails. ``tmp`` must be a sibling of ``final`` (one filesystem)."""
    tmp, final = Path(tmp), Path(final)
    tag = tag or uuid.uuid4().hex[:12]
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}{OLD_MARK}{tag}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
