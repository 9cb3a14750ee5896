"""Mention files: JSONL, one mention per line (input of batch linking, the demo and evaluation).

Fields: ``id`` (required, unique), ``surface`` (required, non-empty; whitespace-only is accepted and
reported), ``context``, ``image`` (path relative to the file or absolute), ``attributes`` (object
string -> string), ``gold`` (entity id, or null: NIL expected). See docs/kb-format.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mel.atomic import write_jsonl_atomic
from mel.errors import InputError
from mel.fileio import iter_jsonl, relative_if_under
from mel.kb.schema import (
    Where,
    check_fields,
    check_images,
    optional_attributes,
    optional_str,
    required_str,
)
from mel.types import Mention

log = logging.getLogger(__name__)

MENTION_FIELDS: tuple[str, ...] = ("id", "surface", "context", "image", "attributes", "gold")


@dataclass
class MentionsReport:
    """What reading a mention file found: counts, and images that were missing (not fatal)."""

    source: str = ""
    mentions: int = 0
    images: int = 0
    missing_images: list[str] = field(default_factory=list)
    """Absolute paths of image files that did not exist; those mentions got ``image=None``."""
    with_gold: int = 0
    """Mentions whose record has a ``gold`` field (an id or null)."""
    gold_nil: int = 0
    """Mentions whose ``gold`` is null (NIL expected)."""
    blank_surfaces: list[str] = field(default_factory=list)
    """Ids of mentions whose surface is whitespace only (accepted: the context still carries the mention)."""

    def summary(self) -> str:
        s = f"{self.source}: {self.mentions} mentions, {self.images} images, {self.with_gold} with gold"
        if self.gold_nil:
            s += f" ({self.gold_nil} NIL)"
        if self.blank_surfaces:
            s += f", {len(self.blank_surfaces)} blank surfaces (e.g. {self.blank_surfaces[0]!r})"
        if self.missing_images:
            s += f", {len(self.missing_images)} missing images (e.g. {self.missing_images[0]})"
        return s


class MentionList(list[Mention]):
    """A ``list[Mention]`` that also carries the :class:`MentionsReport` of the file it was read from."""

    def __init__(self, mentions: Iterable[Mention] = (), report: MentionsReport | None = None) -> None:
        super().__init__(mentions)
        self.report = report if report is not None else MentionsReport()


def mention_from_record(rec: dict[str, Any], where: Where, base_dir: Path,
                        check_image_files: bool = True) -> tuple[Mention, str | None]:
    """Validate one mention record. Returns the mention and the absolute path of its image if missing."""
    check_fields(rec, MENTION_FIELDS, where)
    mention_id = required_str(rec, "id", where)
    surface = required_str(rec, "surface", where, allow_blank=True)
    context = optional_str(rec, "context", where) or ""
    attributes = optional_attributes(rec, "attributes", where)
    gold = optional_str(rec, "gold", where)
    if gold is not None and not gold.strip():
        raise where.error("must be a non-empty entity id or null (NIL expected)", field="gold")
    image = optional_str(rec, "image", where)
    missing: str | None = None
    if image is not None:
        if not image.strip():
            raise where.error("must be a non-empty path or null", field="image")
        found = check_images((image,), base_dir, check_image_files)
        image = found.found[0] if found.found else None
        missing = found.missing[0] if found.missing else None
    mention = Mention(id=mention_id, surface=surface, context=context, image=image,
                      attributes=attributes, gold=gold)
    return mention, missing


def mention_to_record(mention: Mention, base_dir: Path | None = None, include_gold: bool = True) -> dict[str, Any]:
    """The JSONL record of a mention; an image under ``base_dir`` is written relative to it."""
    rec: dict[str, Any] = {"id": mention.id, "surface": mention.surface}
    if mention.context:
        rec["context"] = mention.context
    if mention.image is not None:
        rec["image"] = relative_if_under(mention.image, base_dir) if base_dir is not None else mention.image
    if mention.attributes:
        rec["attributes"] = dict(mention.attributes)
    if include_gold:
        rec["gold"] = mention.gold
    return rec


def read_mentions(path: str | Path, *, check_images: bool = True) -> MentionList:
    """Read and validate a mention JSONL file.

    Returns a :class:`MentionList` (a ``list[Mention]`` with a ``.report``). Bad records raise
    :class:`InputError` naming file, line and field; duplicate ids name the first line. An image file
    that does not exist is not fatal: the mention gets ``image=None`` and the path is listed in
    ``report.missing_images``.
    """
    p = Path(path)
    base_dir = Path(os.path.abspath(p.parent))
    report = MentionsReport(source=str(p))
    out = MentionList(report=report)
    seen: dict[str, int] = {}
    for line, rec in iter_jsonl(p):
        where = Where(str(p), line)
        mention, missing = mention_from_record(rec, where, base_dir, check_images)
        first = seen.get(mention.id)
        if first is not None:
            raise where.error(f"duplicate id {mention.id!r} (first seen on line {first})", field="id")
        seen[mention.id] = line
        if not mention.surface.strip():
            report.blank_surfaces.append(mention.id)
            log.warning("%s:%d: mention %r: surface is whitespace only", p, line, mention.id)
        if missing is not None:
            report.missing_images.append(missing)
            log.warning("%s:%d: mention %r: image file not found: %s", p, line, mention.id, missing)
        elif mention.image is not None:
            report.images += 1
        if "gold" in rec:
            report.with_gold += 1
            report.gold_nil += rec["gold"] is None
        out.append(mention)
    report.mentions = len(out)
    return out


def write_mentions(mentions: Iterable[Mention], path: str | Path, *, include_gold: bool = True) -> Path:
    """Write mentions as JSONL, atomically. Images under the file's directory are written relative to it.

    With ``include_gold`` (default) every record has ``gold`` (null for ``gold=None``: NIL expected).
    """
    p = Path(path)
    base_dir = Path(os.path.abspath(p.parent))
    mentions = list(mentions)
    seen: dict[str, int] = {}
    for i, m in enumerate(mentions):
        if m.id in seen:
            raise InputError(f"cannot write mentions: duplicate id {m.id!r} (mentions {seen[m.id]} and {i})",
                             path=str(p))
        seen[m.id] = i
    write_jsonl_atomic(p, (mention_to_record(m, base_dir, include_gold) for m in mentions))
    return p
