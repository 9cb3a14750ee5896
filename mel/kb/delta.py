"""KB deltas: the changes that turn one KB version into the next, applied by ``mel index --update``.

A delta is a JSONL or Parquet file in the KB record format (docs/kb-format.md, "KB delta"). Each record is

- an **upsert**: the full record of a new or changed entity, optionally with ``"op": "upsert"``;
- a **delete**: ``{"id": "...", "op": "delete"}`` (no other field).

Errors name the file, line (Parquet: row) and field: an unknown ``op``, a delete carrying other fields, an id
given twice in one delta, a delete of an id the KB does not hold, and every KB record error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mel.errors import InputError
from mel.fileio import iter_jsonl
from mel.kb.model import KB, LoadReport
from mel.kb.reader import _iter_parquet_records, kb_format
from mel.kb.schema import KB_FIELDS, Where, entity_from_record, required_str
from mel.types import Entity

log = logging.getLogger(__name__)

OP_FIELD = "op"
UPSERT, DELETE = "upsert", "delete"
DELTA_FIELDS: tuple[str, ...] = (*KB_FIELDS, OP_FIELD)
"""Fields a delta record may have: the KB fields plus ``op``."""


@dataclass(frozen=True)
class DeltaRecord:
    """One change: ``op`` is 'upsert' (``entity`` holds the full new record) or 'delete'."""

    op: str
    entity_id: str
    line: int
    entity: Entity | None = None


@dataclass
class KBDelta:
    """The validated records of a delta file, in file order; ``report`` lists image files that were missing."""

    source: str
    records: list[DeltaRecord]
    report: LoadReport = field(default_factory=LoadReport)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def upserts(self) -> list[DeltaRecord]:
        return [r for r in self.records if r.op == UPSERT]

    @property
    def deletes(self) -> list[DeltaRecord]:
        return [r for r in self.records if r.op == DELETE]


@dataclass
class DeltaResult:
    """The KB after a delta, and which entity ids it added, changed, removed or left as they were."""

    kb: KB
    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    """Ids upserted with a record identical to the one the KB already held."""

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "removed": len(self.removed),
                "upserts_unchanged": len(self.unchanged)}


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _record(rec: dict[str, Any], where: Where, base_dir: Path, check_images: bool,
            report: LoadReport) -> DeltaRecord:
    rec = dict(rec)
    op = rec.pop(OP_FIELD, None)
    if op is None:
        op = UPSERT
    if op not in (UPSERT, DELETE):
        raise where.error(f"must be {UPSERT!r} or {DELETE!r}, got {op!r}", field=OP_FIELD)
    if op == DELETE:
        entity_id = required_str(rec, "id", where)
        extra = [k for k, v in rec.items() if k != "id" and not _is_empty(v)]
        if extra:
            raise where.error(f"a delete record holds only 'id' and 'op'; remove {', '.join(map(repr, extra))}")
        unknown = [k for k in rec if k not in KB_FIELDS]
        if unknown:
            raise where.error(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed fields: "
                              f"{', '.join(DELTA_FIELDS)}")
        return DeltaRecord(DELETE, entity_id, where.line or 0)
    unknown = [k for k in rec if k not in KB_FIELDS]
    if unknown:  # name 'op' among the allowed fields (entity_from_record would not)
        raise where.error(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed fields: "
                          f"{', '.join(DELTA_FIELDS)}")
    entity, images = entity_from_record(rec, where, base_dir, check_images)
    report.entities += 1
    report.images += len(images.found)
    if images.missing:
        report.missing_images.extend(images.missing)
        log.warning("%s:%s: entity %r: %d image file(s) not found, e.g. %s", where.path, where.line, entity.id,
                    len(images.missing), images.missing[0])
    return DeltaRecord(UPSERT, entity.id, where.line or 0, entity)


def read_delta(path: str | Path, *, check_images: bool = True) -> KBDelta:
    """Read and validate a delta file (JSONL or Parquet). Image paths resolve against the delta's directory,
    as for a KB; missing image files are left out and listed in ``report.missing_images``."""
    p = Path(path)
    if not p.is_file():
        raise InputError("KB delta file not found" if not p.exists() else "KB delta must be a file", path=str(p))
    fmt = kb_format(p)
    records_in = iter_jsonl(p) if fmt == "jsonl" else _iter_parquet_records(p, DELTA_FIELDS, ("id",))
    base_dir = Path(os.path.abspath(p.parent))
    report = LoadReport(source=str(p))
    unit = "line" if fmt == "jsonl" else "row"
    seen: dict[str, int] = {}
    records: list[DeltaRecord] = []
    for line, rec in records_in:
        where = Where(str(p), line)
        r = _record(rec, where, base_dir, check_images, report)
        if r.entity_id in seen:
            raise where.error(f"id {r.entity_id!r} appears twice in the delta (first on {unit} "
                              f"{seen[r.entity_id]}); give each entity one record", field="id")
        seen[r.entity_id] = line
        records.append(r)
    if not records:
        log.warning("%s: the KB delta holds no records", p)
    return KBDelta(str(p), records, report)


def apply_delta(base: KB, delta: KBDelta) -> DeltaResult:
    """The KB after ``delta``: deleted entities removed, changed ones replaced in place, new ones appended in
    delta order. Deleting an id ``base`` does not hold is an error naming the delta line."""
    replace: dict[str, Entity] = {}
    removed: set[str] = set()
    added: list[Entity] = []
    changed, unchanged = [], []
    for r in delta.records:
        if r.op == DELETE:
            if r.entity_id not in base:
                raise InputError(f"cannot delete {r.entity_id!r}: the KB being updated holds no such entity",
                                 path=delta.source, line=r.line, field="id")
            removed.add(r.entity_id)
            continue
        assert r.entity is not None
        if r.entity_id in base:
            if base.get(r.entity_id) == r.entity:
                unchanged.append(r.entity_id)
            else:
                replace[r.entity_id] = r.entity
                changed.append(r.entity_id)
        else:
            added.append(r.entity)
    entities = [replace.get(e.id, e) for e in base.entities if e.id not in removed] + added
    report = LoadReport(source=f"{base.report.source or 'KB'} + {delta.source}", entities=len(entities),
                        images=sum(len(e.images) for e in entities),
                        missing_images=list(delta.report.missing_images))
    return DeltaResult(KB(entities, report=report), added=[e.id for e in added], changed=changed,
                       removed=[e.id for e in base.entities if e.id in removed], unchanged=unchanged)
