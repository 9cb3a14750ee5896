"""The one evaluator: every metric the project reports is computed here.

All rates are PERCENT (0-100); latencies are milliseconds. A rate whose denominator is zero is ``None``.

Definitions (``kb_ids``: the ids of the KB linked against):

- *in-KB* mention: ``gold is not None and gold in kb_ids``; *NIL-expected*: every other mention
  (``gold is None`` or gold not in the KB). NIL-expected mentions are never dropped.
- Ranking (``hits@k``, ``mrr``) uses ``LinkResult.candidates`` in the order given (rank 1 first). It is
  reported twice: ``all_mentions`` (a NIL-expected mention always counts as a miss) and ``in_kb_only``.
- ``retrieval.recall`` (``recall@K``): gold anywhere among the returned candidates, K = the largest
  candidate list; independent of the candidates' order (so unchanged by re-ranking).
- ``accuracy``: the final answer ``LinkResult.entity_id`` is correct when it equals an in-KB gold, or is
  NIL (``None``) for a NIL-expected mention.
- ``nil``: precision and recall of answering NIL, NIL-expected being the positive class.
- ``latency_ms``: per stage of ``LinkResult.timings_ms``: n, mean, p50, p99 (linear interpolation).
- ``flags``: per flag of :data:`FLAG_KEYS` (a per-answer flag a method sets to 1.0 in its top candidate's
  ``scores``, e.g. GEMEL's ``name_collision``: the generated name is borne by several entities): ``results``
  flagged and how many of those are ``correct`` (the collision resolved right).
- ``filter`` (only when some candidate carries ``scores["filtered"]``, AMELI's attribute filter): mentions with a
  candidate filtered, candidates filtered, and in-KB mentions whose gold was filtered (it had been retrieved, and
  the filter moved it behind the kept candidates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from mel.atomic import write_text_atomic
from mel.errors import InputError
from mel.kb.model import KB
from mel.types import LinkResult, Mention

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
_EXAMPLES = 5


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def _match(mentions: Sequence[Mention], results: Sequence[LinkResult]) -> list[LinkResult]:
    """Results in mention order, matched by mention id. Missing, duplicate or unknown results are errors."""
    ids = [m.id for m in mentions]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"evaluation: duplicate mention id {i!r}")
        seen.add(i)
    by_id: dict[str, LinkResult] = {}
    for r in results:
        if r.mention_id in by_id:
            raise InputError(f"evaluation: two results for mention {r.mention_id!r}")
        by_id[r.mention_id] = r
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"evaluation: {len(missing)} of {len(ids)} mentions have no result, "
                         f"e.g. {missing[:_EXAMPLES]}")
    known = set(ids)
    extra = [r.mention_id for r in results if r.mention_id not in known]
    if extra:
        raise InputError(f"evaluation: {len(extra)} results are for unknown mentions, e.g. {extra[:_EXAMPLES]}")
    return [by_id[i] for i in ids]


def gold_rank(result: LinkResult, gold: str | None) -> int | None:
    """1-based rank of ``gold`` among the result's candidates, or None."""
    if gold is None:
        return None
    for i, c in enumerate(result.candidates, start=1):
        if c.entity_id == gold:
            return i
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


FLAG_KEYS: tuple[str, ...] = ("name_collision",)
"""Per-answer flags counted in reports: ``name_collision`` = the generated name is borne by several entities."""


def top_flag_stats(results: Sequence[LinkResult], correct: Sequence[bool], key: str) -> dict[str, int]:
    """Among ``results`` whose top candidate has ``scores[key] == 1.0``: how many (``results``) and how many of them
    are correct (``correct[i]`` says whether result i is; same order)."""
    flagged = [ok for r, ok in zip(results, correct, strict=True)
               if r.candidates and r.candidates[0].scores.get(key) == 1.0]
    return {"results": len(flagged), "correct": sum(flagged)}


def latency_stats(results: Iterable[LinkResult]) -> dict[str, dict[str, float]]:
    """Per stage of ``timings_ms``: number of results timing it, mean, p50 and p99 (ms)."""
    per_stage: dict[str, list[float]] = {}
    for r in results:
        for stage, ms in r.timings_ms.items():
            per_stage.setdefault(stage, []).append(float(ms))
    return {
        stage: {"n": len(v), "mean": sum(v) / len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
        for stage, v in per_stage.items()
    }


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """The Wilson score interval (percent) of a rate ``successes / n``; 95% by default. None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def fixed_sample(mentions: Sequence[Mention], n: int, seed: int = 0) -> list[Mention]:
    """A fixed, seeded sample of ``n`` mentions, in their original order.

    Each mention is ranked by a hash of ``(seed, mention id)``, so the sample depends only on the ids, ``n`` and
    the seed: the same mentions for every method and every run, whatever order the split is read in, and a
    smaller sample is a subset of a larger one with the same seed. ``n`` >= the split size gives the whole split.
    """
    import hashlib

    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")

    def key(m: Mention) -> bytes:
        return hashlib.sha256(f"{seed}\x00{m.id}".encode()).digest()

    chosen = {id(m) for m in sorted(mentions, key=key)[:n]}
    return [m for m in mentions if id(m) in chosen]


def _ranking(ranks: list[int | None], ks: Sequence[int], n: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"hits@{k}": _pct(sum(r is not None and r <= k for r in ranks), n) for k in ks}
    out["mrr"] = _pct(sum(1.0 / r for r in ranks if r is not None), n)
    return out


def evaluate(mentions: Sequence[Mention], results: Sequence[LinkResult], kb_ids: Collection[str] | KB,
             *, ks: Sequence[int] = DEFAULT_KS, per_mention: bool = False) -> dict[str, Any]:
    """Score linking results against gold. Results are matched to mentions by id (any order).

    ``kb_ids``: ids of the KB (a :class:`mel.kb.KB` works too). Returns a plain, JSON-serialisable dict
    (see the module docstring for the definitions); ``per_mention=True`` adds one row per mention.
    """
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    ks = sorted(set(ks))
    known: Collection[str] = kb_ids if isinstance(kb_ids, (set, frozenset, dict, KB)) else set(kb_ids)
    ordered = _match(mentions, results)

    n = len(mentions)
    in_kb = [m.gold is not None and m.gold in known for m in mentions]
    ranks = [gold_rank(r, m.gold) if ok else None for m, r, ok in zip(mentions, ordered, in_kb, strict=True)]
    ranks_in_kb = [rk for rk, ok in zip(ranks, in_kb, strict=True) if ok]
    n_in_kb = sum(in_kb)
    n_nil = n - n_in_kb
    predicted_nil = [r.entity_id is None for r in ordered]
    correct = [
        (r.entity_id is None) if not ok else (r.entity_id == m.gold)
        for m, r, ok in zip(mentions, ordered, in_kb, strict=True)
    ]
    nil_tp = sum(p and not ok for p, ok in zip(predicted_nil, in_kb, strict=True))
    n_pred_nil = sum(predicted_nil)
    nil_p, nil_r = _pct(nil_tp, n_pred_nil), _pct(nil_tp, n_nil)
    nil_f1 = None if nil_p is None or nil_r is None or nil_p + nil_r == 0 else 2 * nil_p * nil_r / (nil_p + nil_r)
    n_cands = [len(r.candidates) for r in ordered]
    recalled = [rk is not None for rk in ranks]

    report: dict[str, Any] = {
        "units": {"rates": "percent", "latency": "ms"},
        "counts": {
            "mentions": n,
            "in_kb": n_in_kb,
            "nil_expected": n_nil,
            "gold_none": sum(m.gold is None for m in mentions),
            "gold_not_in_kb": sum(m.gold is not None and not ok for m, ok in zip(mentions, in_kb, strict=True)),
            "predicted_nil": n_pred_nil,
            "kb_entities": len(known),
        },
        "ranking": {
            "all_mentions": _ranking(ranks, ks, n),
            "in_kb_only": _ranking(ranks_in_kb, ks, n_in_kb),
        },
        "retrieval": {
            "k": max(n_cands, default=0),
            "recall_all_mentions": _pct(sum(recalled), n),
            "recall_in_kb_only": _pct(sum(recalled), n_in_kb),
            "candidates_mean": sum(n_cands) / n if n else None,
            "candidates_min": min(n_cands, default=0),
        },
        "accuracy": {
            "all_mentions": _pct(sum(correct), n),
            "in_kb_only": _pct(sum(c for c, ok in zip(correct, in_kb, strict=True) if ok), n_in_kb),
            "nil_expected_only": _pct(sum(c for c, ok in zip(correct, in_kb, strict=True) if not ok), n_nil),
        },
        "nil": {"precision": nil_p, "recall": nil_r, "f1": nil_f1,
                "true_positives": nil_tp, "predicted": n_pred_nil, "expected": n_nil},
        "confidence": {
            "level": 95, "method": "wilson",
            "hits@1_all_mentions": _ci(sum(r == 1 for r in ranks), n),
            "hits@1_in_kb_only": _ci(sum(r == 1 for r in ranks_in_kb), n_in_kb),
        },
        "latency_ms": latency_stats(ordered),
        "flags": {key: top_flag_stats(ordered, correct, key) for key in FLAG_KEYS},
        "methods": sorted({r.method for r in ordered if r.method}),
        "ks": list(ks),
    }
    filtered = [sum(1 for c in r.candidates if c.scores.get("filtered")) for r in ordered]
    if any(filtered):
        gold_filtered = sum(
            1 for m, r, ok in zip(mentions, ordered, in_kb, strict=True)
            if ok and any(c.entity_id == m.gold and c.scores.get("filtered") for c in r.candidates))
        report["filter"] = {"mentions_filtered": sum(1 for f in filtered if f), "candidates_filtered": sum(filtered),
                            "gold_filtered": gold_filtered}
    if per_mention:
        report["per_mention"] = [
            {"mention_id": m.id, "gold": m.gold, "in_kb": ok, "predicted": r.entity_id, "correct": c, "gold_rank": rk}
            for m, r, ok, c, rk in zip(mentions, ordered, in_kb, correct, ranks, strict=True)
        ]
    return report


def _ci(successes: int, n: int) -> list[float] | None:
    ci = wilson_interval(successes, n)
    return None if ci is None else [ci[0], ci[1]]


def index_recall(approx_ids: Sequence[Sequence[Any]], exact_ids: Sequence[Sequence[Any]], k: int) -> float:
    """Recall@k (percent) of an approximate index against exact search, averaged over queries.

    Per query: ``|approx[:k] & exact[:k]| / |exact[:k]|``. Padding ids ``-1`` (faiss: fewer results than k)
    are ignored; a query whose exact list is empty is an error. Accepts lists or 2-D arrays.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(approx_ids) != len(exact_ids):
        raise ValueError(f"index_recall: {len(approx_ids)} approximate result lists vs {len(exact_ids)} exact")
    if len(exact_ids) == 0:
        raise ValueError("index_recall: no queries")

    def top(row: Sequence[Any]) -> set[Any]:
        out = []
        for x in list(row)[:k]:
            x = x.item() if hasattr(x, "item") else x
            if x != -1:
                out.append(x)
        return set(out)

    total = 0.0
    for q, (a, e) in enumerate(zip(approx_ids, exact_ids, strict=True)):
        truth = top(e)
        if not truth:
            raise ValueError(f"index_recall: exact result list of query {q} is empty")
        total += len(top(a) & truth) / len(truth)
    return 100.0 * total / len(exact_ids)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write a report as JSON (indented, UTF-8), atomically. NaN/inf are refused (use None)."""
    p = Path(path)
    write_text_atomic(p, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return p


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A readable text rendering of an :func:`evaluate` report (rates in percent, latency in ms)."""
    c = report["counts"]
    out = [f"mentions {c['mentions']}  in-KB {c['in_kb']}  NIL-expected {c['nil_expected']} "
           f"(gold null {c['gold_none']}, gold not in KB {c['gold_not_in_kb']})  predicted NIL {c['predicted_nil']}"]
    if report.get("methods"):
        out.append(f"method: {', '.join(report['methods'])}")
    if report.get("sample"):
        sm = report["sample"]
        out.append(f"fixed sample: {sm['n']} of {sm['of']} mentions (seed {sm['seed']})")
    ci = (report.get("confidence") or {}).get("hits@1_all_mentions")
    if ci:
        out.append(f"H@1 95% CI (all mentions, Wilson): [{ci[0]:.2f}, {ci[1]:.2f}]")
    out.append("")
    rk = report["ranking"]
    metrics = [f"hits@{k}" for k in report["ks"]] + ["mrr"]
    out += _table(["metric (%)", "all mentions (NIL = miss)", "in-KB only"],
                  [["MRR" if m == "mrr" else m.replace("hits@", "H@"), rk["all_mentions"][m], rk["in_kb_only"][m]]
                   for m in metrics])
    out.append("")
    r, a, nil = report["retrieval"], report["accuracy"], report["nil"]
    out += _table(["metric (%)", "all mentions", "in-KB only", "NIL-expected only"], [
        [f"retrieval recall@{r['k']}", r["recall_all_mentions"], r["recall_in_kb_only"], None],
        ["accuracy (final answer)", a["all_mentions"], a["in_kb_only"], a["nil_expected_only"]],
    ])
    out.append("")
    out.append(f"NIL precision {_fmt(nil['precision'])}  recall {_fmt(nil['recall'])}  F1 {_fmt(nil['f1'])}  "
               f"({nil['true_positives']} correct of {nil['predicted']} predicted, {nil['expected']} expected)")
    for key, f in (report.get("flags") or {}).items():
        if f["results"]:
            out.append(f"{key}: {f['results']} answers ({f['correct']} correct)")
    filt = report.get("filter")
    if filt:
        out.append(f"attribute filter: {filt['candidates_filtered']} candidates removed in "
                   f"{filt['mentions_filtered']} mentions; gold removed in {filt['gold_filtered']}")
    lat = report.get("latency_ms") or {}
    if lat:
        out.append("")
        out += _table(["stage (ms)", "n", "mean", "p50", "p99"],
                      [[s, v["n"], v["mean"], v["p50"], v["p99"]] for s, v in lat.items()])
    return "\n".join(out)
