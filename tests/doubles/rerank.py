"""A deterministic cross-encoder for UNIT TESTS ONLY (no model files, numpy only).

The score of a pair is the number of distinct query words found in the passage, minus a small penalty per
passage word not in the query, so passages sharing more of the query's words score higher. ``fixed`` overrides
the score of chosen passages.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mel.rerank.base import check_pairs

if TYPE_CHECKING:
    import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


class FakeCrossEncoder:
    """Word-overlap scorer; records every call in ``calls`` (the pairs of each ``score`` call)."""

    def __init__(self, fixed: dict[str, float] | None = None, *, model_id: str = "fake:overlap") -> None:
        self.fixed = dict(fixed or {})
        self._id = model_id
        self.calls: list[list[tuple[str, str]]] = []

    @property
    def id(self) -> str:
        return self._id

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import numpy as np

        check_pairs(pairs)
        self.calls.append([tuple(p) for p in pairs])  # type: ignore[misc]
        out = np.zeros(len(pairs), dtype=np.float32)
        for i, (query, passage) in enumerate(pairs):
            if passage in self.fixed:
                out[i] = self.fixed[passage]
                continue
            q = set(_WORD.findall(query.lower()))
            p = set(_WORD.findall(passage.lower()))
            out[i] = len(q & p) - 0.01 * len(p - q)
        return out
