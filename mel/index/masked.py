"""An index with some entities withheld for one run (the NIL protocol, ``mel eval --nil-withhold``).

:class:`MaskedIndex` wraps a loaded :class:`mel.index.artifact.IndexArtifact`: searches never return a withheld
entity (they fetch deeper until ``k`` visible ones are found), and asking for a withheld entity's name, text, vector
or position fails as for an entity the KB never had. Every step reads entities through the index it was built
with, so no withheld entity can come back in a later step; no rebuild is needed.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mel.index.artifact import IndexArtifact
    from mel.kb.model import Entity


class MaskedIndex:
    """``index`` with the entities in ``hidden`` removed from every search and lookup (ids not in the index are
    ignored). Everything else (manifest, path, search settings) is the wrapped index's."""

    def __init__(self, index: IndexArtifact, hidden: Collection[str]) -> None:
        self._index = index
        self.hidden: frozenset[str] = frozenset(e for e in hidden if e in index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    @property
    def unmasked(self) -> IndexArtifact:
        return self._index

    def __len__(self) -> int:
        return len(self._index) - len(self.hidden)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id not in self.hidden and entity_id in self._index

    def _visible(self, entity_id: str) -> str:
        if entity_id in self.hidden:
            raise KeyError(f"entity {entity_id!r} is withheld for this run")
        return entity_id

    def position(self, entity_id: str) -> int:
        return self._index.position(self._visible(entity_id))

    def entity(self, entity_id: str) -> Entity:
        return self._index.entity(self._visible(entity_id))

    def name(self, entity_id: str) -> str:
        return self._index.name(self._visible(entity_id))

    def text(self, entity_id: str) -> str:
        return self._index.text(self._visible(entity_id))

    def text_scores(self, query_vec: np.ndarray, ids: list[str]) -> np.ndarray:
        return self._index.text_scores(query_vec, [self._visible(e) for e in ids])

    def image_scores(self, query_vec: np.ndarray, ids: list[str]) -> list[float | None]:
        return self._index.image_scores(query_vec, [self._visible(e) for e in ids])

    def search_text(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        return self._search(self._index.search_text, queries, k, len(self._index))

    def search_image(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        return self._search(self._index.search_image, queries, k, len(self._index))

    def _search(self, search: Any, queries: np.ndarray, k: int, total: int) -> tuple[np.ndarray, list[list[str]]]:
        """Search deeper until every query has ``k`` visible results (or the whole index was searched)."""
        if not self.hidden:
            return search(queries, k)
        k = max(1, min(k, len(self)))
        pool = min(total, k + min(len(self.hidden), max(8, k)))
        while True:
            scores, ids = search(queries, pool)
            rows = [[(s, e) for s, e in zip(srow.tolist(), irow, strict=False) if e not in self.hidden]
                    for srow, irow in zip(scores, ids, strict=True)]
            exhausted = all(len(irow) < pool for irow in ids)  # the index had no more to give
            if pool >= total or exhausted or all(len(r) >= k for r in rows):
                break
            pool = min(total, pool * 2 + len(self.hidden) // 4)
        out = np.full((len(rows), k), -np.inf, dtype=np.float32)
        out_ids: list[list[str]] = []
        for i, r in enumerate(rows):
            r = r[:k]
            if r:
                out[i, : len(r)] = [s for s, _ in r]
            out_ids.append([e for _, e in r])
        return out, out_ids
