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
    expect_dict,
    read_json,
    record_error,
    record_str,
    split_stats,
    stable_fraction,
)
from mel.datasets.melbench import read_melbench_kb
from mel.datasets.registry import register_dataset
from mel.errors import InputError
from mel.kb.model import KB
from mel.types import Mention

NAME = "richpedia-mel"
DEV_FRACTION = 0.10
DEV_SALT = "richpedia-mel/dev"


def _kb(root: Path) -> tuple[KB, dict[str, Any]]:
    return read_melbench_kb(root, entity_images=True)


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
