"""The evaluator: ranking metrics (all mentions and in-KB only), accuracy with NIL, NIL P/R, latency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.errors import InputError
from mel.eval import evaluate, format_table, index_recall, percentile, write_report
from mel.kb import KB
from mel.types import Candidate, Entity, LinkResult, Mention

KB_IDS = {"A", "B", "C", "D"}


def res(mid: str, answer: str | None, ranked: list[str], **timings: float) -> LinkResult:
    cands = [Candidate(entity_id=e, name=e, score=1.0 - i / 10) for i, e in enumerate(ranked)]
    return LinkResult(mention_id=mid, entity_id=answer, score=0.5, candidates=cands, timings_ms=timings,
                      method="retrieval")


@pytest.fixture()
def case() -> tuple[list[Mention], list[LinkResult]]:
    mentions = [
        Mention(id="m1", surface="a", gold="A"),   # in KB, rank 1, answered right
        Mention(id="m2", surface="b", gold="B"),   # in KB, rank 3, answered wrong (A)
        Mention(id="m3", surface="c", gold="C"),   # in KB, not retrieved, answered NIL (wrong)
        Mention(id="m4", surface="x", gold=None),  # NIL expected, answered NIL (right)
        Mention(id="m5", surface="y", gold="Z"),   # gold not in KB -> NIL expected; answered D (wrong)
    ]
    results = [  # deliberately not in mention order
        res("m5", "D", ["D", "Z"], retrieve=4.0),
        res("m1", "A", ["A", "B"], retrieve=1.0, select=10.0),
        res("m2", "A", ["A", "D", "B"], retrieve=2.0, select=20.0),
        res("m3", None, ["D"], retrieve=3.0),
        res("m4", None, ["A"], retrieve=5.0),
    ]
    return mentions, results


def test_counts_ranking_accuracy_nil(case: tuple[list[Mention], list[LinkResult]]) -> None:
    mentions, results = case
    r = evaluate(mentions, results, KB_IDS)
    assert r["counts"] == {"mentions": 5, "in_kb": 3, "nil_expected": 2, "gold_none": 1, "gold_not_in_kb": 1,
                           "predicted_nil": 2, "kb_entities": 4}
    allm, inkb = r["ranking"]["all_mentions"], r["ranking"]["in_kb_only"]
    assert allm["hits@1"] == pytest.approx(20.0) and inkb["hits@1"] == pytest.approx(100 / 3)
    assert allm["hits@5"] == pytest.approx(40.0) and inkb["hits@5"] == pytest.approx(200 / 3)
    assert allm["hits@20"] == pytest.approx(40.0)
    # the candidate Z of m5 is its gold but not in the KB: it must not count as a hit
    assert allm["mrr"] == pytest.approx(100 * (1 + 1 / 3) / 5) and inkb["mrr"] == pytest.approx(100 * (1 + 1 / 3) / 3)
    assert r["retrieval"]["k"] == 3 and r["retrieval"]["recall_in_kb_only"] == pytest.approx(200 / 3)
    assert r["accuracy"]["all_mentions"] == pytest.approx(40.0)  # m1 and m4
    assert r["accuracy"]["in_kb_only"] == pytest.approx(100 / 3)
    assert r["accuracy"]["nil_expected_only"] == pytest.approx(50.0)
    nil = r["nil"]
    assert nil["precision"] == pytest.approx(50.0) and nil["recall"] == pytest.approx(50.0)
    assert nil["f1"] == pytest.approx(50.0) and (nil["true_positives"], nil["predicted"], nil["expected"]) == (1, 2, 2)
    assert r["methods"] == ["retrieval"] and r["ks"] == [1, 5, 10, 20]


def test_latency(case: tuple[list[Mention], list[LinkResult]]) -> None:
    r = evaluate(*case, KB_IDS)
    lat = r["latency_ms"]
    assert lat["retrieve"]["n"] == 5 and lat["retrieve"]["mean"] == pytest.approx(3.0)
    assert lat["retrieve"]["p50"] == pytest.approx(3.0) and lat["retrieve"]["p99"] == pytest.approx(4.96)
    assert lat["select"] == {"n": 2, "mean": 15.0, "p50": 15.0, "p99": pytest.approx(19.9)}
    assert percentile([5.0], 99) == 5.0


def test_kb_object_and_no_nil_expected(case: tuple[list[Mention], list[LinkResult]]) -> None:
    mentions, results = case
    kb = KB([Entity(id=i, name=i) for i in ("A", "B", "C")])
    r = evaluate(mentions[:3], [x for x in results if x.mention_id in {"m1", "m2", "m3"}], kb, ks=[2, 1])
    assert r["ks"] == [1, 2] and r["counts"]["nil_expected"] == 0
    assert r["ranking"]["all_mentions"] == r["ranking"]["in_kb_only"]
    assert r["nil"]["precision"] == 0.0 and r["nil"]["recall"] is None and r["nil"]["f1"] is None
    assert r["accuracy"]["nil_expected_only"] is None


def test_errors(case: tuple[list[Mention], list[LinkResult]]) -> None:
    mentions, results = case
    with pytest.raises(InputError, match=r"1 of 5 mentions have no result, e.g. \['m3'\]"):
        evaluate(mentions, [x for x in results if x.mention_id != "m3"], KB_IDS)
    with pytest.raises(InputError, match="two results for mention 'm1'"):
        evaluate(mentions, [*results, results[1]], KB_IDS)
    with pytest.raises(InputError, match="results are for unknown mentions"):
        evaluate(mentions, [*results, res("zz", None, [])], KB_IDS)
    with pytest.raises(InputError, match="duplicate mention id 'm1'"):
        evaluate([*mentions, mentions[0]], results, KB_IDS)
    with pytest.raises(ValueError, match="ks must be positive"):
        evaluate(mentions, results, KB_IDS, ks=[0])


def test_per_mention_rows(case: tuple[list[Mention], list[LinkResult]]) -> None:
    rows = evaluate(*case, KB_IDS, per_mention=True)["per_mention"]
    assert [r["mention_id"] for r in rows] == ["m1", "m2", "m3", "m4", "m5"]
    assert [r["gold_rank"] for r in rows] == [1, 3, None, None, None]
    assert [r["correct"] for r in rows] == [True, False, False, True, False]


def test_write_report_and_table(case: tuple[list[Mention], list[LinkResult]], tmp_path: Path) -> None:
    report = evaluate(*case, KB_IDS)
    out = write_report(report, tmp_path / "r" / "report.json")
    assert json.loads(out.read_text()) == report
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]
    text = format_table(report)
    assert "all mentions (NIL = miss)" in text and "in-KB only" in text
    assert "H@1" in text and "20.00" in text and "33.33" in text and "MRR" in text
    assert "NIL precision 50.00" in text and "retrieval recall@3" in text and "retrieve" in text
    with pytest.raises(ValueError):
        write_report({"x": float("nan")}, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_index_recall() -> None:
    import numpy as np

    exact = [[1, 2, 3], [4, 5, 6]]
    assert index_recall(exact, exact, 3) == 100.0
    assert index_recall([[1, 9, 3], [6, 5, 4]], exact, 3) == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert index_recall([[2, 1, 3], [7, 8, 4]], exact, 1) == pytest.approx(0.0)
    assert index_recall(np.array([[1, -1, -1]]), np.array([[1, 2, -1]]), 3) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="1 approximate result lists vs 2 exact"):
        index_recall([[1]], exact, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index_recall(exact, exact, 0)


# ----------------------------------------------------------------------------- fixed samples and intervals
def test_fixed_sample_is_seeded_order_free_and_nested() -> None:
    from mel.eval import fixed_sample

    ms = [Mention(f"m{i}", "s") for i in range(500)]
    a = fixed_sample(ms, 50, seed=1)
    assert len(a) == 50 and [m.id for m in a] == [m.id for m in ms if m in a]  # original order kept
    assert [m.id for m in fixed_sample(list(reversed(ms)), 50, seed=1)][::-1] == [m.id for m in a]  # any read order
    assert {m.id for m in fixed_sample(ms, 20, seed=1)} <= {m.id for m in a}  # smaller samples nest
    assert {m.id for m in fixed_sample(ms, 50, seed=2)} != {m.id for m in a}
    assert fixed_sample(ms, 10_000, seed=1) == ms
    with pytest.raises(ValueError):
        fixed_sample(ms, 0)


def test_wilson_interval_and_report_confidence(case: tuple[list[Mention], list[LinkResult]]) -> None:
    from mel.eval import wilson_interval

    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(82.56, abs=0.01) and hi == pytest.approx(94.48, abs=0.01)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(100.0)
    assert wilson_interval(0, 0) is None
    ms, rs = case
    report = evaluate(ms, rs, KB_IDS)
    ci = report["confidence"]["hits@1_all_mentions"]
    h1 = report["ranking"]["all_mentions"]["hits@1"]
    assert ci[0] <= h1 <= ci[1] and report["confidence"]["level"] == 95
    assert "95% CI" in format_table(report)
