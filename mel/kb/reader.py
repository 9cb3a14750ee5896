"""Read and write KB files: JSONL (one entity per line) or Parquet, or a directory holding
``entities.jsonl`` / ``entities.parquet``. Format: docs/kb-format.md."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mel.atomic import atomic_path, write_jsonl_atomic
from mel.errors import InputError
from mel.fileio import iter_jsonl
from mel.kb.model import KB, LoadReport
from mel.kb.schema import KB_FIELDS, KB_REQUIRED, Where, entity_from_record, entity_to_record, parquet_schema
from mel.types import Entity

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
DIR_FILES = ("entities.jsonl", "entities.parquet")
_PARQUET_BATCH_ROWS = 8192


def resolve_kb_file(path: str | Path) -> Path:
    """The KB file for ``path``: the file itself, or ``entities.jsonl`` / ``entities.parquet`` in a directory."""
    p = Path(path)
    if p.is_dir():
        present = [p / n for n in DIR_FILES if (p / n).is_file()]
        if not present:
            raise InputError(f"directory holds no KB file (expected one of: {', '.join(DIR_FILES)})", path=str(p))
        if len(present) > 1:
            raise InputError(f"directory holds both {DIR_FILES[0]} and {DIR_FILES[1]}; keep only one", path=str(p))
        return present[0]
    if not p.exists():
        raise InputError("KB file not found", path=str(p))
    kb_format(p)  # rejects unknown suffixes
    return p


def kb_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise InputError(f"unknown KB file type {suffix!r}; use one of: "
                     f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} (or a directory with {' or '.join(DIR_FILES)})",
                     path=str(path))


def _iter_parquet_records(path: Path, allowed: tuple[str, ...] = KB_FIELDS,
                          required: tuple[str, ...] = KB_REQUIRED) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` (1-based) from a Parquet KB (or KB delta), after checking its columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file: {e}", path=str(path)) from None
    schema = pf.schema_arrow
    unknown = [n for n in schema.names if n not in allowed]
    if unknown:
        raise InputError(f"unknown column(s) {', '.join(repr(n) for n in unknown)}; "
                         f"allowed columns: {', '.join(allowed)}", path=str(path))
    for name in required:
        if name not in schema.names:
            raise InputError(f"required column {name!r} is missing", path=str(path))
    map_columns = {f.name for f in schema if pa.types.is_map(f.type)}
    struct_columns = {f.name for f in schema if pa.types.is_struct(f.type)}
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for rec in batch.to_pylist():
            row += 1
            for col in map_columns:  # map<string, string> arrives as a list of (key, value) pairs
                if rec.get(col) is not None:
                    pairs = rec[col]
                    rec[col] = dict(pairs)
                    if len(rec[col]) != len(pairs):
                        raise InputError("duplicate keys in map", path=str(path), line=row, field=col)
            for col in struct_columns:  # a struct column gives every row every key; null means absent
                if isinstance(rec.get(col), dict):
                    rec[col] = {k: v for k, v in rec[col].items() if v is not None}
            yield row, rec


def iter_kb_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Raw records of a KB file with their 1-based line (JSONL) or row (Parquet) numbers; not validated."""
    p = resolve_kb_file(path)
    if kb_format(p) == "jsonl":
        return iter_jsonl(p)
    return _iter_parquet_records(p)


def iter_entities(path: str | Path, report: LoadReport | None = None,
                  check_images: bool = True) -> Iterator[Entity]:
    """Validate and yield the entities of a KB file one at a time (streaming; for very large KBs).

    Duplicate ids raise :class:`InputError` naming both lines. ``report`` (if given) is filled in as
    entities are read: counts, and image files that were missing (left out of ``Entity.images``).
    """
    p = resolve_kb_file(path)
    base_dir = Path(os.path.abspath(p.parent))
    report = report if report is not None else LoadReport()
    report.source = str(p)
    seen: dict[str, int] = {}
    for line, rec in iter_kb_records(p):
        where = Where(str(p), line)
        entity, images = entity_from_record(rec, where, base_dir, check_images)
        first = seen.get(entity.id)
        if first is not None:
            unit = "line" if kb_format(p) == "jsonl" else "row"
            raise where.error(f"duplicate id {entity.id!r} (first seen on {unit} {first})", field="id")
        seen[entity.id] = line
        report.entities += 1
        report.images += len(images.found)
        if images.missing:
            report.missing_images.extend(images.missing)
            log.warning("%s:%d: entity %r: %d image file(s) not found, e.g. %s",
                        p, line, entity.id, len(images.missing), images.missing[0])
        yield entity


def read_kb(path: str | Path, *, check_images: bool = True) -> KB:
    """Read and validate a KB (JSONL, Parquet, or a directory with ``entities.jsonl|parquet``).

    Bad records raise :class:`mel.errors.InputError` naming file, line and field. Image paths become
    absolute; missing image files are left out of ``Entity.images`` and listed in ``kb.report.missing_images``.
    ``check_images=False`` skips the existence check (every image path is kept).
    """
    report = LoadReport()
    entities = list(iter_entities(path, report, check_images))
    if not entities:
        log.warning("%s: the KB holds no entities", report.source)
    kb = KB(entities, report=report)
    log.info(report.summary())
    return kb


def write_kb(kb: KB | list[Entity], path: str | Path) -> Path:
    """Write a KB as JSONL (``.jsonl``/``.ndjson``) or Parquet (``.parquet``/``.pq``), atomically.

    Image paths under the output file's directory are written relative to it, others absolute, so
    ``read_kb(write_kb(kb, p))`` gives back the same entities. A directory path gets ``entities.jsonl``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DIR_FILES[0]
    fmt = kb_format(p)
    entities = kb.entities if isinstance(kb, KB) else list(kb)
    ids: dict[str, int] = {}
    for i, e in enumerate(entities):
        if e.id in ids:
            raise InputError(f"cannot write KB: duplicate entity id {e.id!r} (entities {ids[e.id]} and {i})",
                             path=str(p))
        ids[e.id] = i
    base_dir = Path(os.path.abspath(p.parent))
    records = (entity_to_record(e, base_dir) for e in entities)
    if fmt == "jsonl":
        write_jsonl_atomic(p, records)
        return p
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for rec in records:
        rec.setdefault("aliases", [])
        rec.setdefault("description", "")
        rec["attributes"] = list(rec.get("attributes", {}).items())
        rec.setdefault("images", [])
        rows.append(rec)
    table = pa.Table.from_pylist(rows, schema=parquet_schema())
    with atomic_path(p) as tmp:
        pq.write_table(table, tmp)
    return p
