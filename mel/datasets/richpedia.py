"""RichpediaMEL (MELBench release + GHMFC split): people mentioned in Wikipedia-style sentences.

KB: every entity of ``qid2abs.json`` (ids are Wikidata QIDs) named by ``qid2ne.json``. Its attribute text
("Occupation: politician. Languages: English.") becomes ``Entity.attributes`` when it round-trips exactly
through :func:`mel.text.attributes_text`, else ``Entity.description``, so ``entity_text(e, "{name}. {attributes}")``
is always ``"<name>. <qid2abs text>"``. Sample images ``images/<QID>.jpg`` are attached to their entities.

Mentions: ``train.json`` / ``test.json`` (one mention per record; surface ``mentions``, context ``sentence``,
gold ``answer``; a blank surface -- one train record has one -- is kept and counted in ``blank_surface``).
``dev`` is 10% of train chosen by a stable hash of the record id, removed from train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mel.datasets.base import (
    Dataset,
    count_images,
    expect_dict,
    index_images,
    parse_attribute_text,
    read_json,
    record_error,
    record_str,
    split_stats,
    stable_fraction,
)
from mel.datasets.registry import register_dataset
from mel.errors import InputError
from mel.kb.model import KB, LoadReport
from mel.types import Entity, Mention

NAME = "richpedia-mel"
DEV_FRACTION = 0.10
DEV_SALT = "richpedia-mel/dev"


def _kb(root: Path) -> tuple[KB, dict[str, Any]]:
    abs_path, ne_path = root / "qid2abs.json", root / "qid2ne.json"
    texts = expect_dict(read_json(abs_path), abs_path, "QID -> entity text")
    names = expect_dict(read_json(ne_path), ne_path, "QID -> entity name")
    no_name = [q for q in texts if q not in names]
    if no_name:
        raise InputError(f"{len(no_name)} entities of {abs_path.name} have no name here, e.g. {no_name[0]!r}",
                         path=str(ne_path))
    images = index_images(root / "images", texts)
    entities: list[Entity] = []
    as_attributes = 0
    for qid, text in texts.items():
        if not isinstance(text, str):
            raise record_error(abs_path, qid, f"entity text must be a string, got {type(text).__name__}")
        name = names[qid]
        if not isinstance(name, str) or not name.strip():
            raise record_error(ne_path, qid, f"entity name must be a non-empty string, got {name!r}")
        attrs = parse_attribute_text(text)
        as_attributes += attrs is not None and bool(attrs)
        entities.append(Entity(id=qid, name=name, description="" if attrs is not None else text,
                               attributes=attrs or {}, images=tuple(images.get(qid, ()))))
    report = LoadReport(source=str(abs_path), entities=len(entities), images=sum(map(len, images.values())))
    stats = {
        "entities": len(entities),
        "entities_text_as_attributes": as_attributes,
        "entities_text_as_description": sum(bool(e.description) for e in entities),
        "entities_text_empty": sum(not e.description and not e.attributes for e in entities),
        "names_not_in_kb": sum(q not in texts for q in names),
        "entity_images": report.images,
        "image_files_not_matching_an_entity": count_images(root / "images") - report.images,
    }
    return KB(entities, report=report), stats


def _mentions(path: Path) -> list[Mention]:
    records = expect_dict(read_json(path), path, "records keyed by id")
    out: list[Mention] = []
    for key, rec in records.items():
        rid = record_str(rec, key, "id", path)
        if rid != key:
            raise record_error(path, key, f"id {rid!r} differs from the record's key", "id")
        out.append(Mention(id=rid,
                           surface=record_str(rec, key, "mentions", path, allow_empty=True),
                           context=record_str(rec, key, "sentence", path, allow_empty=True),
                           gold=record_str(rec, key, "answer", path)))
    return out


@register_dataset(NAME, folder="richpedia-mel", marker="qid2abs.json")
def load_richpedia(root: Path) -> Dataset:
    kb, stats = _kb(root)
    train_all = _mentions(root / "train.json")
    test = _mentions(root / "test.json")
    overlap = {m.id for m in train_all} & {m.id for m in test}
    if overlap:
        raise InputError(f"{len(overlap)} record ids are in both train.json and test.json, e.g. "
                         f"{sorted(overlap)[0]!r}", path=str(root))
    dev = [m for m in train_all if stable_fraction(m.id, DEV_SALT) < DEV_FRACTION]
    dev_ids = {m.id for m in dev}
    train = [m for m in train_all if m.id not in dev_ids]
    splits = {"train": train, "dev": dev, "test": test}
    stats["splits"] = {
        "train": split_stats(train, kb, records=len(train), records_missing=0, source="train.json"),
        "dev": split_stats(dev, kb, records=len(dev), records_missing=0,
                           source=f"train.json ({DEV_FRACTION:.0%} by stable hash of the record id)"),
        "test": split_stats(test, kb, records=len(test), records_missing=0, source="test.json"),
    }
    stats["mentions"] = sum(len(v) for v in splits.values())
    stats["gold_not_in_kb"] = sum(s["gold_not_in_kb"] for s in stats["splits"].values())
    return Dataset(name=NAME, kb=kb, splits=splits, stats=stats, root=str(root))
