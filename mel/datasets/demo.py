"""The shipped demo data as a dataset (``data/demo``: ``kb/entities.jsonl`` and ``mentions.jsonl``), so that
``mel eval --dataset demo --data-dir data`` scores any method without the benchmark data. Its one split, ``test``,
is every demo mention (NIL mentions included, gold ``null``); ``dev`` (``dev.jsonl``: other mentions of the same
entities, and mentions of things the KB lacks) is what the demo calibrates its NIL threshold on."""

from __future__ import annotations

from pathlib import Path

from mel.datasets.base import Dataset, split_stats
from mel.datasets.registry import register_dataset

NAME = "demo"


@register_dataset(NAME, folder="demo", marker="kb/entities.jsonl")
def load(root: Path) -> Dataset:
    from mel.kb import read_kb
    from mel.mentions import read_mentions

    kb = read_kb(root / "kb" / "entities.jsonl")
    splits = {"test": list(read_mentions(root / "mentions.jsonl"))}
    if (root / "dev.jsonl").is_file():
        splits["dev"] = list(read_mentions(root / "dev.jsonl"))
    stats = {"entities": len(kb), "splits": {name: split_stats(ms, kb) for name, ms in splits.items()}}
    return Dataset(NAME, kb, splits, stats, str(root))
