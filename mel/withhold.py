"""The withheld-gold NIL protocol: benchmark mentions all have their entity in the KB, so NIL is measured by hiding
some gold entities from the KB for one run (``mel eval --nil-withhold F``, ``mel calibrate``).

A seeded fraction ``F`` of the in-KB mentions is drawn (by a hash of the seed and the mention id, so the draw
depends only on the ids); their gold entities are hidden for the whole run (:class:`mel.index.MaskedIndex`), and
every mention whose gold is hidden, drawn or not, expects NIL. Nothing is dropped: the evaluator sees the KB without
the hidden entities, so those mentions count as NIL-expected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mel.types import Mention


@dataclass(frozen=True)
class Withheld:
    """What one run hides: ``entities`` (ids) and the mentions that now expect NIL."""

    fraction: float
    seed: int
    entities: frozenset[str]
    drawn: tuple[str, ...]
    """Ids of the mentions drawn (their golds were hidden)."""
    nil_mentions: tuple[str, ...]
    """Ids of every mention whose gold is hidden (the drawn ones and any sharing a gold with them)."""

    def summary(self, n_mentions: int) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": self.seed, "entities_hidden": len(self.entities),
                "mentions_drawn": len(self.drawn), "mentions_nil": len(self.nil_mentions),
                "shared_gold_extra": len(self.nil_mentions) - len(self.drawn), "mentions": n_mentions}


def choose_withheld(mentions: Sequence[Mention], kb_ids: Collection[str], fraction: float, seed: int = 0) -> Withheld:
    """Draw ``round(fraction * in-KB mentions)`` (at least one when ``fraction`` > 0) in-KB mentions and hide their
    golds. ``fraction`` must lie in [0, 1)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the withheld fraction must lie in [0, 1), got {fraction}")
    in_kb = [m for m in mentions if m.gold is not None and m.gold in kb_ids]
    n = 0 if fraction == 0 or not in_kb else max(1, round(fraction * len(in_kb)))

    def key(m: Mention) -> bytes:
        return hashlib.sha256(f"withhold\x00{seed}\x00{m.id}".encode()).digest()

    drawn = sorted(in_kb, key=key)[:n]
    hidden = frozenset(m.gold for m in drawn if m.gold is not None)
    nil = tuple(m.id for m in mentions if m.gold in hidden)
    return Withheld(fraction, seed, hidden, tuple(m.id for m in drawn), nil)
