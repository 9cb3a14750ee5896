"""WikiMEL (MELBench release + GHMFC split): captions of news/Wikimedia images mentioning people.

KB: every entity of ``qid2abs.json`` named by ``qid2ne.json`` (text handled as for RichpediaMEL).
Mentions: a record of ``Wikidata-MEL.json`` holds parallel lists ``mentions`` / ``entities`` / ``answer``;
each index gives one :class:`Mention` with id ``"{record_id}-{i}"`` (context: the caption ``sentence``;
image: ``images/<record id>.*`` when present). Splits come from ``splits.json``; split ids absent from the
JSON are counted (``records_missing``) and listed in part (``records_missing_examples``), never dropped
silently. Mentions whose gold is not in the KB are kept and counted (``gold_not_in_kb``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mel.datasets.base import (
    Dataset,
    count_images,
    expect_dict,
    index_images,
    read_json,
    record_error,
    record_str,
    split_stats,
)
from mel.datasets.melbench import read_melbench_kb
from mel.datasets.registry import register_dataset
from mel.errors import InputError
from mel.kb.model import KB
from mel.types import Mention

NAME = "wikimel"
RECORDS_FILE = "Wikidata-MEL.json"
PARALLEL_FIELDS = ("mentions", "entities", "answer")
_EXAMPLES = 10


def _kb(root: Path) -> tuple[KB, dict[str, Any]]:
    return read_melbench_kb(root, entity_images=False)


def _record_mentions(key: str, rec: Any, path: Path, image: str | None) -> list[Mention]:
    rid = record_str(rec, key, "id", path)
    if rid != key:
        raise record_error(path, key, f"id {rid!r} differs from the record's key", "id")
    context = record_str(rec, key, "sentence", path, allow_empty=True)
    lists = {}
    for name in PARALLEL_FIELDS:
        value = rec.get(name)
        if not isinstance(value, list):
            raise record_error(path, key, f"must be a list, got {type(value).__name__}", name)
        lists[name] = value
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise record_error(path, key, f"parallel lists differ in length: {lengths}")
    if lengths["mentions"] == 0:
        raise record_error(path, key, "record holds no mention", "mentions")
    out = []
    for i, (surface, gold) in enumerate(zip(lists["mentions"], lists["answer"], strict=True)):
        if not isinstance(surface, str):  # a blank surface is kept (the caption remains) and counted per split
            raise record_error(path, key, f"must be a string, got {surface!r}", f"mentions[{i}]")
        if not isinstance(gold, str) or not gold.strip():
            raise record_error(path, key, f"must be a non-empty entity id, got {gold!r}", f"answer[{i}]")
        out.append(Mention(id=f"{rid}-{i}", surface=surface, context=context, image=image, gold=gold))
    return out


@register_dataset(NAME, folder="wikimel", marker=RECORDS_FILE)
def load_wikimel(root: Path) -> Dataset:
    kb, stats = _kb(root)
    records_path, splits_path = root / RECORDS_FILE, root / "splits.json"
    records = expect_dict(read_json(records_path), records_path, "records keyed by id")
    split_ids = expect_dict(read_json(splits_path), splits_path, "split name -> record ids")
    images = index_images(root / "images")
    assigned: dict[str, str] = {}
    splits: dict[str, list[Mention]] = {}
    stats["splits"] = {}
    for split, ids in split_ids.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError("must be a list of record id strings", path=str(splits_path), field=split)
        mentions: list[Mention] = []
        missing: list[str] = []
        for rid in ids:
            if rid in assigned:
                raise InputError(f"record id {rid!r} is listed in split {assigned[rid]!r} and again in {split!r}",
                                 path=str(splits_path), field=split)
            assigned[rid] = split
            if rid not in records:
                missing.append(rid)
                continue
            rec_images = images.get(rid)
            mentions.extend(_record_mentions(rid, records[rid], records_path, rec_images[0] if rec_images else None))
        splits[split] = mentions
        stats["splits"][split] = split_stats(
            mentions, kb, records=len(ids), records_found=len(ids) - len(missing), records_missing=len(missing),
            records_missing_examples=missing[:_EXAMPLES])
    unassigned = [rid for rid in records if rid not in assigned]
    stats["records"] = len(records)
    stats["records_in_no_split"] = len(unassigned)
    stats["records_missing"] = sum(s["records_missing"] for s in stats["splits"].values())
    stats["mentions"] = sum(len(v) for v in splits.values())
    stats["gold_not_in_kb"] = sum(s["gold_not_in_kb"] for s in stats["splits"].values())
    stats["mention_images"] = sum(len(v) for v in images.values())
    stats["image_files_not_matching_a_record"] = count_images(root / "images") - sum(
        len(v) for k, v in images.items() if k in records)
    return Dataset(name=NAME, kb=kb, splits=splits, stats=stats, root=str(root))
