"""Small file helpers shared by readers: JSONL iteration with line numbers and image-path resolution (atomic
output is :mod:`mel.atomic`). Light: standard library only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file whose top level is an object; errors (bad JSON, bad encoding, not an object) name the file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON: {e}", path=str(path)) from e
    if not isinstance(data, dict):
        raise InputError("top level must be an object", path=str(path))
    return data


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
