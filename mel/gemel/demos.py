"""In-context demonstrations: the labelled mentions most similar to the query, shown before it in the prompt.

The pool is a list of labelled mentions (a dataset's training split, or a mentions file); each is embedded once
with the text encoder (the retrieval mention template), and a query's demonstrations are its ``n`` nearest pool
mentions by cosine similarity (dot product of L2-normalised vectors). They are returned in ASCENDING similarity:
the most similar demonstration is the last one, nearest the query. :func:`trim_to_budget` drops the least similar
ones first until the prompt fits.

Skipped from the pool:

- mentions with a NIL gold (``gold is None``) and mentions whose gold is not in the KB: a demonstration shows a
  mention followed by the KB name it links to, and a NIL mention has no name to show (nor could the trie generate
  one);
- at query time, the query mention itself when it is in the pool (same id, surface and context), so evaluating on
  the pool's own split never shows the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mel.errors import InputError
from mel.text import mention_text
from mel.types import Mention

if TYPE_CHECKING:
    import numpy as np

    from mel.encoders.base import TextEncoder

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Demo:
    """One demonstration: a labelled mention, the KB name of its gold entity, its similarity to the query."""

    mention: Mention
    name: str
    similarity: float


def same_mention(a: Mention, b: Mention) -> bool:
    """True when ``a`` and ``b`` are the same mention record (id, surface and context all equal)."""
    return a.id == b.id and a.surface == b.surface and a.context == b.context


class DemoPool:
    """Labelled mentions with their gold names and text vectors (row i of ``vectors`` embeds ``mentions[i]``)."""

    def __init__(self, mentions: Sequence[Mention], names: Sequence[str], vectors: np.ndarray, *,
                 skipped_nil: int = 0, skipped_not_in_kb: int = 0) -> None:
        import numpy as np

        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(mentions) != len(names) or vecs.ndim != 2 or len(vecs) != len(mentions):
            raise ValueError(f"demo pool: {len(mentions)} mentions, {len(names)} names and vectors of shape "
                             f"{vecs.shape} must agree")
        self.mentions = list(mentions)
        self.names = list(names)
        self.vectors = vecs
        self.skipped_nil = skipped_nil
        self.skipped_not_in_kb = skipped_not_in_kb

    @classmethod
    def build(cls, mentions: Sequence[Mention], gold_name: Callable[[str], str | None], encoder: TextEncoder,
              template: str = "{surface}. {context}") -> DemoPool:
        """Keep the mentions whose gold ``gold_name`` knows (None: not in the KB), embed them with ``encoder``."""
        kept: list[Mention] = []
        names: list[str] = []
        nil = not_in_kb = 0
        for m in mentions:
            if m.gold is None:
                nil += 1
                continue
            name = gold_name(m.gold)
            if name is None or not name.strip():
                not_in_kb += 1
                continue
            kept.append(m)
            names.append(name)
        if not kept and mentions:
            raise InputError(f"demonstration pool: none of {len(mentions)} mentions has a gold entity in the KB "
                             f"({nil} NIL, {not_in_kb} gold not in the KB)")
        vectors = encoder.encode([mention_text(m, template) for m in kept])
        log.info("GEMEL demonstration pool: %d mentions (skipped %d NIL, %d gold not in KB)", len(kept), nil,
                 not_in_kb)
        return cls(kept, names, vectors, skipped_nil=nil, skipped_not_in_kb=not_in_kb)

    def __len__(self) -> int:
        return len(self.mentions)

    def nearest(self, query: Mention, query_vec: np.ndarray, n: int) -> list[Demo]:
        """The ``n`` pool mentions most similar to ``query`` (itself excluded), least similar FIRST, most similar
        LAST. Ties are broken by pool order (deterministic)."""
        import numpy as np

        if n <= 0 or not self.mentions:
            return []
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.vectors.shape[1]:
            raise InputError(f"query vector has dim {q.shape[0]}, the demonstration pool {self.vectors.shape[1]}")
        sims = self.vectors @ q
        want = min(len(sims), n + 1)  # one spare in case the query itself is in the pool
        if want < len(sims):
            part = np.argpartition(-sims, want - 1)[:want]
            cutoff = sims[part].min()
            part = np.flatnonzero(sims >= cutoff)  # every tie at the cut-off, so pool order decides among them
        else:
            part = np.arange(len(sims))
        order = part[np.lexsort((part, -sims[part]))]  # similarity descending, then pool position
        picked = [int(i) for i in order if not same_mention(self.mentions[int(i)], query)][:n]
        return [Demo(self.mentions[i], self.names[i], float(sims[i])) for i in reversed(picked)]


def trim_to_budget(demos: Sequence[T], cost: Callable[[T], int], budget: int) -> list[T]:
    """The longest tail of ``demos`` (ordered least similar first) whose total ``cost`` fits ``budget``:
    the least similar demonstrations are dropped first, and the kept ones stay in order."""
    kept: list[T] = []
    total = 0
    for d in reversed(demos):
        c = cost(d)
        if total + c > budget:
            break
        kept.append(d)
        total += c
    return kept[::-1]
