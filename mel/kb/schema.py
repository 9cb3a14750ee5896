"""The KB record schema (one entity per JSONL line or Parquet row) and the field validators shared
with the mention reader. See docs/kb-format.md.

Every validator raises :class:`mel.errors.InputError` naming file, line and field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mel.errors import InputError
from mel.fileio import json_type, relative_if_under, resolve_path
from mel.types import Entity

KB_FIELDS: tuple[str, ...] = ("id", "name", "aliases", "description", "attributes", "images")
"""Top-level fields a KB record may have; any other field is rejected."""
KB_REQUIRED: tuple[str, ...] = ("id", "name")


@dataclass(frozen=True)
class Where:
    """Location of a record, for error messages: file and 1-based line (Parquet: 1-based row)."""

    path: str
    line: int | None = None

    def error(self, message: str, field: str | None = None) -> InputError:
        return InputError(message, path=self.path, line=self.line, field=field)


@dataclass
class ImageCheck:
    """Image paths found / missing while validating one record."""

    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- field validators
def check_fields(rec: dict[str, Any], allowed: tuple[str, ...], where: Where) -> None:
    unknown = [k for k in rec if k not in allowed]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise where.error(f"unknown field(s) {names}; allowed fields: {', '.join(allowed)}")


def required_str(rec: dict[str, Any], name: str, where: Where, *, allow_blank: bool = False) -> str:
    """A required string field; empty ("") is rejected, whitespace-only too unless ``allow_blank``."""
    if name not in rec or rec[name] is None:
        raise where.error("required field is missing", field=name)
    value = rec[name]
    if not isinstance(value, str):
        raise where.error(f"must be a string, got {json_type(value)} {value!r}", field=name)
    if not value or (not allow_blank and not value.strip()):
        raise where.error("must not be empty" if not value else "must not be blank (whitespace only)", field=name)
    return value


def optional_str(rec: dict[str, Any], name: str, where: Where) -> str | None:
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise where.error(f"must be a string or null, got {json_type(value)} {value!r}", field=name)
    return value


def optional_str_list(rec: dict[str, Any], name: str, where: Where) -> tuple[str, ...]:
    value = rec.get(name)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise where.error(f"must be a list of strings, got {json_type(value)}", field=name)
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise where.error(f"must be a string, got {json_type(item)} {item!r}", field=f"{name}[{i}]")
        if not item.strip():
            raise where.error("must not be empty", field=f"{name}[{i}]")
        out.append(item)
    return tuple(out)


def scalar_to_str(value: Any, field_name: str, where: Where) -> str:
    """Attribute values: strings kept, booleans -> 'true'/'false', numbers -> their text; others rejected."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise where.error(f"must be a finite number, got {value!r}", field=field_name)
        return repr(value)
    raise where.error(f"must be a string or number, got {json_type(value)}", field=field_name)


def optional_attributes(rec: dict[str, Any], name: str, where: Where) -> dict[str, str]:
    value = rec.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(f"must be an object of string -> string, got {json_type(value)}", field=name)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k.strip():
            raise where.error(f"keys must be non-empty strings, got {k!r}", field=name)
        out[k] = scalar_to_str(v, f"{name}.{k}", where)
    return out


def check_images(paths: tuple[str, ...], base_dir: Path, check_exists: bool) -> ImageCheck:
    """Resolve image paths against ``base_dir``; split them into found and missing (not fatal)."""
    result = ImageCheck()
    for p in paths:
        absolute = resolve_path(p, base_dir)
        if check_exists and not os.path.isfile(absolute):
            result.missing.append(absolute)
        else:
            result.found.append(absolute)
    return result


# ----------------------------------------------------------------------------- entity records
def entity_from_record(rec: dict[str, Any], where: Where, base_dir: Path,
                       check_image_files: bool = True) -> tuple[Entity, ImageCheck]:
    """Validate one KB record and build the :class:`Entity` (image paths absolute, missing ones left out)."""
    check_fields(rec, KB_FIELDS, where)
    entity_id = required_str(rec, "id", where)
    name = required_str(rec, "name", where)
    aliases = optional_str_list(rec, "aliases", where)
    description = optional_str(rec, "description", where) or ""
    attributes = optional_attributes(rec, "attributes", where)
    images = check_images(optional_str_list(rec, "images", where), base_dir, check_image_files)
    entity = Entity(id=entity_id, name=name, aliases=aliases, description=description,
                    attributes=attributes, images=tuple(images.found))
    return entity, images


def entity_to_record(entity: Entity, base_dir: Path | None = None) -> dict[str, Any]:
    """The KB record of an entity; image paths under ``base_dir`` are written relative to it.

    Empty optional fields are left out.
    """
    rec: dict[str, Any] = {"id": entity.id, "name": entity.name}
    if entity.aliases:
        rec["aliases"] = list(entity.aliases)
    if entity.description:
        rec["description"] = entity.description
    if entity.attributes:
        rec["attributes"] = dict(entity.attributes)
    if entity.images:
        rec["images"] = [relative_if_under(p, base_dir) if base_dir is not None else p for p in entity.images]
    return rec


def parquet_schema() -> Any:
    """The Arrow schema :func:`mel.kb.write_kb` uses for Parquet KBs (pyarrow imported lazily)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("aliases", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("images", pa.list_(pa.string())),
    ])
