"""Link confidence: the probability that a mention's top candidate is its entity, from a few features of the final
candidate list, fitted on dev under the withheld-gold protocol by ``mel calibrate`` (logistic regression).

A raw final score says how close the best entity is, not whether it is the one: when the right entity is missing
from the KB, the best remaining one is often nearly as close. The margin to the runner-up and how well the mention's
surface matches the candidate's name separate the two much better (on RichpediaMEL dev: score AUC 0.89 alone, 0.94
with these). Every feature is computed from the mention and the candidates a method's steps produced, so it works
for every method and in every process (no index or model needed: the Serve ingress computes it).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from mel.config import ConfidenceModelConfig
    from mel.types import Candidate, Mention

FEATURES: tuple[str, ...] = ("score", "margin", "retrieval", "name_similarity", "name_exact")


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


def features(mention: Mention, candidates: Sequence[Candidate]) -> list[float]:
    """The :data:`FEATURES` of a mention's final candidate list (best first; at least one candidate):
    the top score, its margin over the runner-up, the top's retrieval score, and how the mention's surface matches
    the top candidate's name (similarity ratio in [0, 1], exact match 0/1)."""
    top = candidates[0]
    second = candidates[1].score if len(candidates) > 1 else top.score - 1.0
    sur, name = _norm(mention.surface), _norm(top.name)
    return [float(top.score), float(top.score - second), float(top.scores.get("retrieval", top.score)),
            difflib.SequenceMatcher(None, sur, name).ratio(), 1.0 if sur and sur == name else 0.0]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float,
                                                                                          np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features.
    Returns (weights, bias, mean, scale) such that ``p = sigmoid(((x - mean) / scale) @ weights + bias)``."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_logistic: x {x.shape} and y {y.shape} do not match")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = l2 * len(x) * np.eye(z.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - y) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mean, scale


def predict(model: ConfidenceModelConfig, mention: Mention, candidates: Sequence[Candidate]) -> float:
    """The model's probability that the top candidate is right (0.0 without candidates)."""
    if not candidates:
        return 0.0
    f = features(mention, candidates)
    by_name = dict(zip(FEATURES, f, strict=True))
    z = model.bias + sum(w * (by_name[n] - m) / s
                         for n, w, m, s in zip(model.features, model.weights, model.mean, model.scale, strict=True))
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
