"""Small file helpers shared by readers and writers: JSONL iteration with line numbers, atomic output,
and image-path resolution. Light: standard library only."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mel.errors import InputError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (1-based line numbers).

    Raises :class:`InputError` naming the file and line for undecodable bytes, invalid JSON and lines
    that are not JSON objects. A UTF-8 byte-order mark on the first line is accepted.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("file not found" if not p.exists() else "not a regular file", path=str(p))
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not valid UTF-8 (byte {e.start + 1})", path=str(p), line=lineno) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", path=str(p), line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {json_type(obj)}", path=str(p), line=lineno)
            yield lineno, obj


def json_type(value: object) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Readers therefore never see a partial file. Parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl_atomic(path: str | Path, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically. Returns the number of records written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False))
            f.write("\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def resolve_path(value: str, base_dir: Path) -> str:
    """Absolute, normalised form of a path that may be relative to ``base_dir`` (symlinks are kept)."""
    p = Path(value)
    if not p.is_absolute():
        p = base_dir / p
    return os.path.normpath(os.path.abspath(p))


def relative_if_under(value: str, base_dir: Path) -> str:
    """``value`` relative to ``base_dir`` when it lies under it (POSIX separators), else unchanged."""
    base = os.path.abspath(base_dir)
    p = os.path.abspath(value)
    try:
        common = os.path.commonpath([base, p])
    except ValueError:  # different drives
        return value
    if common != base:
        return value
    return Path(os.path.relpath(p, base)).as_posix()
