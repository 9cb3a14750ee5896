"""AMELI's fusion of one mention's candidates (the ``fuse`` step), pure Python.

Over the *head* (the first ``ameli.text.candidates`` candidates not removed by the attribute filter)::

    stream = lam * norm(text) + (1 - lam) * norm(image)     (norm(text) alone when a candidate has no image score,
                                                              norm(image) alone when no text stream ran)
    final  = p * norm_in(incoming) + (1 - p) * stream        (norm_in(incoming) alone when neither stream ran)

``text`` is ``scores["entail"]`` (the ``entail`` step), ``image`` is ``scores["image_stream"]`` (an image step, when
one runs), ``incoming`` is the score the candidate arrived with (retrieval, re-ranked when re-ranking ran), kept as
``scores["incoming"]``. ``norm`` is min-max (or a softmax with ``temperature``) over the head; ``norm_in`` is min-max
fitted on the head, so candidates behind the head (their incoming score below the head's) get ``p * norm_in`` at
most 0 and never overtake it. Candidates the filter removed (``scores["filtered"]``) rank last, scored 1 below the
lowest other candidate. ``Candidate.score`` and ``scores["final"]`` hold the result; the list is re-sorted (stable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mel.types import Candidate

TEXT, IMAGE, FILTERED, INCOMING = "entail", "image_stream", "filtered", "incoming"


def minmax(xs: Sequence[float]) -> list[float]:
    """``(x - min) / (max - min)``; all 1.0 when the values are equal (or there is one)."""
    if not xs:
        return []
    lo, hi = min(xs), max(xs)
    if hi - lo <= 1e-12:
        return [1.0] * len(xs)
    return [(x - lo) / (hi - lo) for x in xs]


def softmax(xs: Sequence[float], temperature: float = 1.0) -> list[float]:
    if not xs:
        return []
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    m = max(xs)
    e = [math.exp((x - m) / temperature) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def normalize(xs: Sequence[float], how: str, temperature: float = 1.0) -> list[float]:
    if how == "minmax":
        return minmax(xs)
    if how == "softmax":
        return softmax(xs, temperature)
    raise ValueError(f"unknown normalisation {how!r}; expected 'minmax' or 'softmax'")


def _fit_minmax(xs: Sequence[float], head: Sequence[float]) -> list[float]:
    lo, hi = min(head), max(head)
    if hi - lo <= 1e-12:
        return [1.0 if x >= hi else x - hi for x in xs]
    return [(x - lo) / (hi - lo) for x in xs]


def fuse(candidates: Sequence[Candidate], head: int, *, lam: float, prior_weight: float, how: str = "minmax",
         temperature: float = 1.0) -> list[Candidate]:
    """The fused, re-sorted list (new Candidate objects; see the module docstring)."""
    if not 0.0 <= lam <= 1.0 or not 0.0 <= prior_weight <= 1.0:
        raise ValueError(f"lam and prior_weight must lie in [0, 1], got {lam}, {prior_weight}")
    if not candidates:
        return []
    kept = [c for c in candidates if not c.scores.get(FILTERED)]
    dropped = [c for c in candidates if c.scores.get(FILTERED)]
    h = kept[:head]
    incoming = [c.scores.get(INCOMING, c.score) for c in kept]
    norm_in = _fit_minmax(incoming, incoming[: len(h)]) if h else []
    has_text = [TEXT in c.scores for c in h]
    text_idx = [i for i, t in enumerate(has_text) if t]
    nt: dict[int, float] = dict(zip(text_idx, normalize([float(h[i].scores[TEXT]) for i in text_idx], how,
                                                            temperature)))
    img_idx = [i for i, c in enumerate(h) if c.scores.get(IMAGE) is not None]
    ni: dict[int, float] = dict(zip(img_idx, normalize([float(h[i].scores[IMAGE]) for i in img_idx], how,
                                                           temperature)))
    out: list[Candidate] = []
    for i, c in enumerate(kept):
        if i < len(h) and (i in nt or i in ni):
            if i in nt and i in ni:
                stream = lam * nt[i] + (1.0 - lam) * ni[i]
            else:
                stream = nt[i] if i in nt else ni[i]
            final = prior_weight * norm_in[i] + (1.0 - prior_weight) * stream
        elif text_idx or img_idx:
            final = prior_weight * norm_in[i]  # behind the head, or moved into it by the filter: no stream score
        else:
            final = norm_in[i]
        scores = dict(c.scores)
        scores[INCOMING] = incoming[i]
        scores["final"] = final
        out.append(Candidate(c.entity_id, c.name, final, scores))
    out.sort(key=lambda c: -c.score)
    floor = min((c.score for c in out), default=0.0) - 1.0
    for c in dropped:
        scores = dict(c.scores)
        scores.setdefault(INCOMING, c.score)
        scores["final"] = floor
        out.append(Candidate(c.entity_id, c.name, floor, scores))
    return out
