"""What a dataset adapter produces (:class:`Dataset`), and helpers adapters share.

An adapter is a function ``(root: Path) -> Dataset`` registered under a name in
:mod:`mel.datasets.registry`; ``root`` is the dataset's own folder. Adapters only translate a benchmark's
files into the common model (a :class:`mel.kb.KB` plus mentions per split) and count what they found.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mel.errors import InputError
from mel.kb.model import KB
from mel.text import attributes_text
from mel.types import Mention

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")

DatasetLoader = Callable[[Path], "Dataset"]


@dataclass
class Dataset:
    """A benchmark in the common model: the KB, mentions per split, and counts of what was found.

    ``stats`` is JSON-serialisable: totals plus ``stats["splits"][name]`` per split (records, records
    missing, mentions, mentions whose gold is not in the KB, mentions with an image, ...).
    """

    name: str
    kb: KB
    splits: dict[str, list[Mention]]
    stats: dict[str, Any] = field(default_factory=dict)
    root: str = ""

    def split(self, name: str) -> list[Mention]:
        if name not in self.splits:
            raise InputError(f"dataset {self.name!r} has no split {name!r}; splits: {', '.join(self.splits)}")
        return self.splits[name]

    def summary(self) -> str:
        parts = [f"{self.name}: {len(self.kb)} entities"]
        for name, mentions in self.splits.items():
            s = self.stats.get("splits", {}).get(name, {})
            extra = []
            if s.get("records_missing"):
                extra.append(f"{s['records_missing']} records missing")
            if s.get("gold_not_in_kb"):
                extra.append(f"{s['gold_not_in_kb']} gold not in KB")
            parts.append(f"{name} {len(mentions)} mentions" + (f" ({', '.join(extra)})" if extra else ""))
        return "; ".join(parts)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Export as ``entities.jsonl`` plus ``<split>.jsonl`` mention files (the formats of docs/kb-format.md)."""
        from mel.kb.reader import write_kb
        from mel.mentions import write_mentions

        out = Path(out_dir)
        paths = {"kb": write_kb(self.kb, out / "entities.jsonl")}
        for name, mentions in self.splits.items():
            paths[name] = write_mentions(mentions, out / f"{name}.jsonl")
        return paths


def read_json(path: Path) -> Any:
    """Load a JSON file, raising :class:`InputError` naming the file when it is missing or invalid."""
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start + 1})", path=str(path)) from None


def expect_dict(value: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object of {what}, got {type(value).__name__}", path=str(path))
    return value


def record_error(path: Path, key: str, message: str, field_name: str | None = None) -> InputError:
    """An error about record ``key`` of a JSON file keyed by record id."""
    return InputError(f"record {key!r}: {message}", path=str(path), field=field_name)


def record_str(rec: Any, key: str, field_name: str, path: Path, *, allow_empty: bool = False) -> str:
    """A string field of a record in a JSON benchmark file (not blank unless ``allow_empty``)."""
    if not isinstance(rec, dict):
        raise record_error(path, key, f"expected an object, got {type(rec).__name__}")
    if field_name not in rec:
        raise record_error(path, key, "required field is missing", field_name)
    value = rec[field_name]
    if not isinstance(value, str):
        raise record_error(path, key, f"must be a string, got {type(value).__name__}", field_name)
    if not allow_empty and not value.strip():
        raise record_error(path, key, "must not be empty", field_name)
    return value


def stable_fraction(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) for ``key`` (same on every machine and Python run)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_STATEMENT_START = re.compile(r"(?<=\.)\s+(?=[^\s:.][^:.]*:\s)")


def parse_attribute_text(text: str) -> dict[str, str] | None:
    """Parse ``"Occupation: politician, writer. Languages: English."`` into attributes.

    Returns the attributes only when :func:`mel.text.attributes_text` renders them back to exactly the
    (whitespace-normalised) input; otherwise ``None`` (keep the text as a description). ``""`` gives ``{}``.
    """
    normalised = " ".join(text.split())
    if not normalised:
        return {}
    attrs: dict[str, str] = {}
    for statement in _STATEMENT_START.split(normalised):
        key, sep, value = statement.partition(": ")
        if not sep or not key.strip() or key in attrs:
            return None
        value = value[:-1] if value.endswith(".") else value
        if not value:
            return None
        attrs[key] = value
    return attrs if attributes_text(attrs) == normalised else None


def index_images(folder: Path, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Image files of ``folder`` grouped by file stem (absolute paths, sorted). With ``keys``, only those stems."""
    if not folder.is_dir():
        return {}
    wanted = set(keys) if keys is not None else None
    out: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file():
            continue
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if wanted is None or stem in wanted:
            out.setdefault(stem, []).append(os.path.abspath(entry.path))
    return out


def count_images(folder: Path) -> int:
    return sum(len(v) for v in index_images(folder).values())


def split_stats(mentions: list[Mention], kb: KB, **extra: Any) -> dict[str, Any]:
    """Counts every adapter reports per split."""
    gold_none = sum(m.gold is None for m in mentions)
    blank = [m.id for m in mentions if not m.surface.strip()]
    return {
        **extra,
        "mentions": len(mentions),
        "blank_surface": len(blank),
        "blank_surface_ids": blank[:10],
        "gold_none": gold_none,
        "gold_not_in_kb": sum(m.gold is not None and m.gold not in kb for m in mentions),
        "with_image": sum(m.image is not None for m in mentions),
    }
