"""The shipped demo data as a dataset (``data/demo``: ``kb/entities.jsonl`` and ``mentions.jsonl``), so that
``mel eval --dataset demo --data-dir data`` scores any method without the benchmark data. Its one split, ``test``,
is every demo mention (NIL mentions included, gold ``null``)."""

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
    mentions = list(read_mentions(root / "mentions.jsonl"))
    stats = {"entities": len(kb), "splits": {"test": split_stats(mentions, kb)}}
    return Dataset(NAME, kb, {"test": mentions}, stats, str(root))
