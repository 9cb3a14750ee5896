"""NIL calibration: the threshold on a method's final score below which it answers NIL, chosen on dev under the
withheld-gold protocol (:mod:`mel.withhold`), written as a small file beside the index it was made for.

``mel calibrate`` links a dev split with a fraction of golds withheld and no threshold, and picks the threshold that
maximises overall accuracy (NIL counted as a class). The file records the method, a hash of the method's config
(:meth:`mel.methods.MethodSpec.config_hash`) and the index id (:func:`mel.index.manifest.index_id`); ``mel eval``,
``mel link`` and ``mel serve`` read it for that method and index (``nil.calibration``) and refuse it on a mismatch.
A score that cannot separate NIL from in-KB mentions (AUC below :data:`MIN_AUC`) is marked ``separable: false``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import ArtifactMismatch, InputError

if TYPE_CHECKING:
    from mel.config import Config
    from mel.methods.spec import MethodSpec
    from mel.types import LinkResult, Mention

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MIN_AUC = 0.6
CALIBRATION_DIR = "calibration"
CURVE_POINTS = 101


@dataclass(frozen=True)
class ScorePoint:
    """One mention for calibration: the final score of its top candidate (None: no candidate, always NIL), whether
    answering that candidate would be right, and whether NIL is the right answer."""

    score: float | None
    top_correct: bool
    nil_expected: bool


def score_points(mentions: Sequence[Mention], results: Sequence[LinkResult],
                 kb_ids: Collection[str]) -> list[ScorePoint]:
    """Pair mentions with their results (by id) as calibration points; ``kb_ids`` is the KB the run saw."""
    by_id = {r.mention_id: r for r in results}
    out = []
    for m in mentions:
        r = by_id.get(m.id)
        if r is None:
            raise InputError(f"calibration: mention {m.id!r} has no result")
        nil_expected = m.gold is None or m.gold not in kb_ids
        top = r.candidates[0] if r.candidates else None
        out.append(ScorePoint(None if top is None else float(r.score),
                              top is not None and not nil_expected and top.entity_id == m.gold, nil_expected))
    return out


def outcome(points: Sequence[ScorePoint], threshold: float | None) -> dict[str, Any]:
    """Figures (percent) of answering NIL when the score is below ``threshold`` (None: only without candidates)."""
    n = len(points)
    pred = [p.score is None or (threshold is not None and p.score < threshold) for p in points]
    tp = sum(a and p.nil_expected for a, p in zip(pred, points, strict=True))
    expected = sum(p.nil_expected for p in points)
    in_kb = n - expected
    correct = sum((a and p.nil_expected) or (not a and p.top_correct) for a, p in zip(pred, points, strict=True))
    in_kb_right = sum(not a and p.top_correct for a, p in zip(pred, points, strict=True))
    prec = 100 * tp / sum(pred) if sum(pred) else None
    rec = 100 * tp / expected if expected else None
    f1 = None if prec is None or rec is None or prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return {"threshold": threshold, "accuracy": 100 * correct / n if n else None,
            "nil_precision": prec, "nil_recall": rec, "nil_f1": f1,
            "in_kb_accuracy": 100 * in_kb_right / in_kb if in_kb else None,
            "predicted_nil": sum(pred), "nil_expected": expected, "mentions": n}


def best_threshold(points: Sequence[ScorePoint]) -> float | None:
    """The threshold maximising overall accuracy: midway between the highest score answered NIL and the lowest
    answered, so it does not sit on a dev score. None when answering NIL only without candidates is best; among
    equally good cuts, the one answering NIL least often."""
    scored = sorted(((p.score, p) for p in points if p.score is not None), key=lambda t: t[0])
    if not scored:
        return None
    # Cut before position i: scores[:i] answer NIL, scores[i:] answer their top candidate.
    gain = [0] * (len(scored) + 1)  # correct answers among scored mentions for each cut
    gain[0] = sum(p.top_correct for _, p in scored)
    for i, (_, p) in enumerate(scored, start=1):
        gain[i] = gain[i - 1] + (1 if p.nil_expected else 0) - (1 if p.top_correct else 0)
    best, best_i = gain[0], 0
    for i in range(1, len(scored) + 1):
        # a cut between two equal scores cannot be made: the threshold would keep both or drop both
        if i < len(scored) and scored[i][0] == scored[i - 1][0]:
            continue
        if gain[i] > best:
            best, best_i = gain[i], i
    if best_i == 0:
        return None
    if best_i == len(scored):
        return scored[-1][0] + max(1e-6, abs(scored[-1][0]) * 1e-6)
    return (scored[best_i - 1][0] + scored[best_i][0]) / 2


def auc(points: Sequence[ScorePoint]) -> float | None:
    """How well the score separates in-KB mentions (higher) from NIL-expected ones: the probability that a random
    in-KB mention outscores a random NIL-expected one (ties count half; no candidate scores lowest)."""
    pos = [(-math.inf if p.score is None else p.score) for p in points if not p.nil_expected]
    neg = [(-math.inf if p.score is None else p.score) for p in points if p.nil_expected]
    if not pos or not neg:
        return None
    allv = sorted([(v, 0) for v in neg] + [(v, 1) for v in pos])
    # Mann-Whitney U with average ranks for ties
    ranks: list[float] = [0.0] * len(allv)
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        for t in range(i, j + 1):
            ranks[t] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(r for r, (_, lab) in zip(ranks, allv, strict=True) if lab == 1)
    u = r_pos - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def curve(points: Sequence[ScorePoint], n: int = CURVE_POINTS) -> list[dict[str, Any]]:
    """NIL precision/recall, accuracy and in-KB accuracy at ``n`` thresholds spread over the score quantiles."""
    scores = sorted(p.score for p in points if p.score is not None)
    if not scores:
        return []
    qs = sorted({scores[min(len(scores) - 1, round(i * (len(scores) - 1) / (n - 1)))] for i in range(n)})
    return [outcome(points, t) for t in qs]


@dataclass
class Calibration:
    """A NIL threshold for one method on one index, and how it was chosen."""

    method: str
    method_hash: str
    index_id: str
    threshold: float | None
    auc: float | None
    separable: bool
    dev: dict[str, Any]
    """Protocol (dataset, split, sample, withheld fraction, seed) and the figures at the threshold."""
    score: str = ""
    """What the method's final score is (its declaration's ``score``)."""
    confidence: dict[str, Any] | None = None
    """The link-confidence model fitted on the same run (``nil.confidence``); the threshold applies to its
    probability. None: the threshold applies to the method's own final score."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(points: Sequence[ScorePoint], *, method: str, method_hash: str, index_id: str, score: str = "",
              protocol: dict[str, Any] | None = None, confidence: dict[str, Any] | None = None) -> Calibration:
    """Choose the threshold on ``points`` and describe it (figures at the threshold and without one, the curve).
    ``confidence``: the model whose probabilities the points' scores are (see :func:`fit_confidence`)."""
    if not points:
        raise InputError("calibration: no mentions to calibrate on")
    if not any(p.nil_expected for p in points):
        raise InputError("calibration: no NIL-expected mention (withhold a fraction of golds: --nil-withhold)")
    t = best_threshold(points)
    a = auc(points)
    dev = dict(protocol or {})
    dev["at_threshold"] = outcome(points, t)
    dev["without_threshold"] = outcome(points, None)
    return Calibration(method=method, method_hash=method_hash, index_id=index_id, threshold=t, auc=a,
                       separable=a is not None and a >= MIN_AUC, dev=dev, score=score, confidence=confidence,
                       curve=curve(points))


MIN_CLASS = 10
"""Fewest right and wrong top candidates each that fitting a confidence model needs."""


def fit_confidence(mentions: Sequence[Mention], results: Sequence[LinkResult],
                   points: Sequence[ScorePoint]) -> tuple[dict[str, Any] | None, list[ScorePoint]]:
    """Fit the link-confidence model (:mod:`mel.confidence`) on a calibration run: target = the top candidate is
    right. Returns the model (as ``nil.confidence`` values) and the points re-scored with 2-fold cross-fitted
    probabilities (each half scored by the model fitted on the other half), on which the threshold is chosen
    without being flattered by the fit. (None, ``points``) when there are fewer than :data:`MIN_CLASS` right or
    wrong top candidates."""
    import numpy as np

    from mel.confidence import FEATURES, features, fit_logistic

    by_id = {r.mention_id: r for r in results}
    rows = [(i, features(m, by_id[m.id].candidates)) for i, (m, p) in enumerate(zip(mentions, points, strict=True))
            if p.score is not None]
    y = np.array([points[i].top_correct for i, _ in rows], dtype=np.float64)
    if len(rows) < 2 * MIN_CLASS or y.sum() < MIN_CLASS or (len(y) - y.sum()) < MIN_CLASS:
        log.info("calibration: too few right (%d) or wrong (%d) top candidates to fit a confidence model; "
                    "the threshold applies to the raw score", int(y.sum()), int(len(y) - y.sum()))
        return None, list(points)
    x = np.array([f for _, f in rows], dtype=np.float64)

    def prob(w: np.ndarray, b: float, mean: np.ndarray, scale: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-np.clip(((xs - mean) / scale) @ w + b, -30, 30)))

    folds = np.arange(len(rows)) % 2
    cross = np.zeros(len(rows))
    for k in (0, 1):
        train, test = folds != k, folds == k
        if y[train].sum() in (0, train.sum()):  # one class only in this half: use the full fit below
            continue
        cross[test] = prob(*fit_logistic(x[train], y[train]), x[test])
    w, b, mean, scale = fit_logistic(x, y)
    for k in (0, 1):
        if y[folds != k].sum() in (0, (folds != k).sum()):
            cross[folds == k] = prob(w, b, mean, scale, x[folds == k])
    model = {"features": list(FEATURES), "weights": w.tolist(), "bias": b, "mean": mean.tolist(),
             "scale": scale.tolist()}
    out = list(points)
    for (i, _), c in zip(rows, cross.tolist(), strict=True):
        out[i] = ScorePoint(float(c), points[i].top_correct, points[i].nil_expected)
    return model, out


def calibration_path(index_dir: str | Path, method: str) -> Path:
    """Where the calibration of ``method`` for the index in ``index_dir`` lives by default."""
    return Path(index_dir) / CALIBRATION_DIR / f"{method}.json"


def write_calibration(cal: Calibration, path: str | Path) -> Path:
    from mel.atomic import write_text_atomic

    p = Path(path)
    write_text_atomic(p, json.dumps(cal.to_dict(), indent=2, allow_nan=False) + "\n")
    return p


def read_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    if not p.is_file():
        raise InputError("calibration file not found; make one with `mel calibrate`", path=str(p))
    from mel.fileio import read_json_object

    data = read_json_object(p)
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactMismatch(f"{p}: calibration format_version {data.get('format_version')!r}, this code reads "
                               f"{FORMAT_VERSION}; rerun `mel calibrate`")
    known = {f for f in Calibration.__dataclass_fields__}
    missing = sorted({"method", "method_hash", "index_id", "threshold", "auc", "separable", "dev"} - data.keys())
    if missing:
        raise InputError(f"missing {', '.join(missing)}", path=str(p), field=missing[0])
    unknown = sorted(data.keys() - known)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}", path=str(p), field=unknown[0])
    t = data["threshold"]
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)):
        raise InputError(f"threshold must be a finite number or null, got {t!r}", path=str(p), field="threshold")
    return Calibration(**data)


def resolve_nil(cfg: Config, spec: MethodSpec, index: Any) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with the NIL settings (threshold, confidence model) a run of ``spec`` on ``index`` uses, and where
    they came from.

    ``nil.calibration``: ``off`` -> ``nil.threshold``; ``auto`` -> the calibration file beside the index when
    there is one (else ``nil.threshold``); a path -> that file, which must exist. A file made for another index or
    another configuration of the method is refused, saying what to rerun."""
    mode = cfg.nil.calibration
    configured = (cfg, {"source": "config", "threshold": cfg.nil.threshold,
                        "confidence": cfg.nil.confidence is not None})
    if mode == "off" or index is None:
        return configured
    index_dir = getattr(index, "path", None)
    if mode == "auto":
        if index_dir is None:
            return configured
        path = calibration_path(index_dir, spec.name)
        if not path.is_file():
            return configured
    else:
        path = Path(mode)
    cal = read_calibration(path)
    from mel.index.manifest import index_id

    rerun = (f"rerun `mel calibrate --method {spec.name} --index {index_dir}` with this configuration, "
             "or set nil.calibration=off")
    if cal.method != spec.name:
        raise ArtifactMismatch(f"{path}: calibration is for method {cal.method!r}, not {spec.name!r}; {rerun}")
    want_index = index_id(index.manifest)
    if cal.index_id != want_index:
        raise ArtifactMismatch(f"{path}: calibration was made for index {cal.index_id}, this index ({index_dir}) is "
                               f"{want_index}; {rerun}")
    want_hash = spec.config_hash(cfg)
    if cal.method_hash != want_hash:
        raise ArtifactMismatch(f"{path}: calibration was made with another configuration of method {spec.name!r} "
                               f"(hash {cal.method_hash}, now {want_hash}: the settings its steps read changed); "
                               f"{rerun}")
    if not cal.separable:
        log.warning("%s: the score of method %r hardly separates NIL from in-KB mentions (AUC %s on dev); the "
                    "threshold %s is applied anyway", path, spec.name, cal.auc, cal.threshold)
    from mel.config import ConfidenceModelConfig

    try:
        model = None if cal.confidence is None else ConfidenceModelConfig.model_validate(cal.confidence)
    except ValueError as e:
        raise InputError(f"bad confidence model: {e}", path=str(path), field="confidence") from None
    info = {"source": str(path), "threshold": cal.threshold, "auc": cal.auc, "separable": cal.separable,
            "confidence": model is not None}
    return with_nil(cfg, cal.threshold, model), info


def with_nil(cfg: Config, threshold: float | None, confidence: Any = None) -> Config:
    """``cfg`` with ``nil.threshold`` and ``nil.confidence`` replaced (everything else shared)."""
    return cfg.model_copy(update={"nil": cfg.nil.model_copy(update={"threshold": threshold,
                                                                    "confidence": confidence})})
