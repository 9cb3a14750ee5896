"""Re-ranking stage: a cross-encoder re-scores the head of each retrieved candidate list.

For the top ``rerank.candidates`` of a mention, the pairs (mention query text, entity passage text) are scored
jointly by a :class:`~mel.rerank.base.CrossEncoder` (UniMEL's re-ranking, AMELI's cross-encoder stream). Both
scores are put on one scale per mention (:func:`normalize_scores`) and fused:
``final = (1 - w) * norm(retrieval) + w * norm(cross-encoder)``. Candidates below the head keep their retrieval
order after it (their cross-encoder part is the scale's minimum, so they never overtake the head).

Per-stage scores stay on each candidate: ``scores["retrieval"]`` (unchanged), ``scores["rerank"]`` (the raw
cross-encoder logit, head only) and ``scores["final"]`` (the fused score, also ``Candidate.score``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mel.config import RerankConfig
from mel.text import entity_text, mention_text
from mel.types import Candidate, Mention

if TYPE_CHECKING:
    from mel.index.artifact import IndexArtifact
    from mel.rerank.base import CrossEncoder

NORMALIZATIONS = ("minmax", "softmax", "sigmoid")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def normalize_scores(retrieval: Sequence[float], cross: Sequence[float], how: str,
                     temperature: float = 0.05) -> tuple[list[float], list[float]]:
    """Put retrieval scores (whole list, best first) and cross-encoder logits (its head) on a [0, 1]-like scale.

    Returns (retrieval', cross') with ``len(retrieval)`` entries each; entries past the head get cross' = 0.
    The maps are fitted on the head, so tail retrieval scores (<= the head's) map to values <= the head's.

    - ``minmax``: ``(x - min) / (max - min)`` over the head (all 1.0 when the head's scores are equal);
    - ``softmax``: ``exp((r - max r) / temperature) / Z`` for retrieval, a softmax for the logits;
    - ``sigmoid``: retrieval as is, ``sigmoid(logit)`` for the cross-encoder (no per-mention fitting).
    """
    n, h = len(retrieval), len(cross)
    if h > n:
        raise ValueError(f"{h} cross-encoder scores for {n} candidates: the head cannot be longer than the list")
    r = [float(x) for x in retrieval]
    c = [float(x) for x in cross]
    if h == 0:
        return r, [0.0] * n
    pad = [0.0] * (n - h)
    if how == "minmax":
        def fit(xs: list[float], head: list[float]) -> list[float]:
            lo, hi = min(head), max(head)
            if hi - lo <= 1e-12:
                return [1.0 if x >= hi else 0.0 for x in xs]
            return [(x - lo) / (hi - lo) for x in xs]

        return fit(r, r[:h]), fit(c, c) + pad
    if how == "softmax":
        m = max(r[:h])
        er = [math.exp((x - m) / temperature) for x in r]
        zr = sum(er[:h])
        mc = max(c)
        ec = [math.exp(x - mc) for x in c]
        zc = sum(ec)
        return [x / zr for x in er], [x / zc for x in ec] + pad
    if how == "sigmoid":
        return r, [_sigmoid(x) for x in c] + pad
    raise ValueError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALIZATIONS)}")


def fuse_rerank(retrieval: Sequence[float], cross: Sequence[float], weight: float, how: str = "minmax",
                temperature: float = 0.05) -> list[float]:
    """Final scores ``(1 - weight) * norm(retrieval) + weight * norm(cross)`` for the whole list (see
    :func:`normalize_scores`); ``cross`` covers the head of ``retrieval``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    nr, nc = normalize_scores(retrieval, cross, how, temperature)
    return [(1.0 - weight) * a + weight * b for a, b in zip(nr, nc)]


def entity_passages(index: IndexArtifact, template: str | None) -> Callable[[str], str]:
    """Entity id -> passage text: the text the index embedded, or the entity rendered with ``template``."""
    if template is None:
        return index.text
    return lambda eid: entity_text(index.entity(eid), template)


class Reranker:
    """Re-scores and re-sorts the head of each candidate list with a :class:`CrossEncoder`."""

    def __init__(self, encoder: CrossEncoder, cfg: RerankConfig, entity_text: Callable[[str], str]) -> None:
        self.encoder = encoder
        self.cfg = cfg
        self.entity_text = entity_text

    def query(self, mention: Mention) -> str:
        return mention_text(mention, self.cfg.query_template)

    def pairs(self, mentions: list[Mention], candidate_lists: list[list[Candidate]]) -> list[tuple[str, str]]:
        """The (query, passage) pairs scored: the head of every list, in order."""
        out: list[tuple[str, str]] = []
        for m, cands in zip(mentions, candidate_lists, strict=True):
            q = self.query(m)
            out.extend((q, self.entity_text(c.entity_id)) for c in cands[: self.cfg.candidates])
        return out

    def rerank(self, mentions: list[Mention], candidate_lists: list[list[Candidate]]) -> list[list[Candidate]]:
        """Each list re-scored and re-sorted (new Candidate objects; the input is not changed). All pairs of the
        batch go to the cross-encoder in one call. Lists with fewer than 2 candidates, and every list when the weight
        is 0, pass through unscored."""
        if len(mentions) != len(candidate_lists):
            raise ValueError(f"{len(mentions)} mentions but {len(candidate_lists)} candidate lists")
        todo = [i for i, c in enumerate(candidate_lists) if len(c) >= 2]
        result = [list(c) for c in candidate_lists]
        if not todo or self.cfg.weight == 0:
            return result  # with weight 0 the cross-encoder could not change the order: skip it
        logits = self.encoder.score(self.pairs([mentions[i] for i in todo], [candidate_lists[i] for i in todo]))
        pos = 0
        for i in todo:
            cands = candidate_lists[i]
            h = min(len(cands), self.cfg.candidates)
            head_logits = [float(x) for x in logits[pos:pos + h]]
            pos += h
            retrieval = [c.scores.get("retrieval", c.score) for c in cands]
            final = fuse_rerank(retrieval, head_logits, self.cfg.weight, self.cfg.normalize, self.cfg.temperature)
            rescored = []
            for j, (c, f) in enumerate(zip(cands, final)):
                scores = dict(c.scores)
                if j < h:
                    scores["rerank"] = head_logits[j]
                scores["final"] = f
                rescored.append(Candidate(c.entity_id, c.name, f, scores))
            rescored.sort(key=lambda c: -c.score)  # stable: ties keep retrieval order
            result[i] = rescored
        if pos != len(logits):
            raise RuntimeError(f"cross-encoder returned {len(logits)} scores for {pos} pairs")
        return result
