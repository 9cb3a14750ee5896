"""GEMEL constrained beam search with a table-driven LM double (unit level; the real SmolLM2 runs in
tests/integration/test_gemel.py), and the evaluator's count of name-collision answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mel.gemel.decode import ConstrainedBeamSearch
from mel.gemel.trie import NameTrie
from mel.types import Candidate, LinkResult, Mention

V, END = 10, 1


class TableLM:
    """Next-token log-probabilities from a table keyed by the tokens generated so far (default: uniform)."""

    tokenizer = None
    fingerprint = "table"
    hidden_size = 4
    max_positions = 64

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]) -> None:
        self.table = table
        self.advances = 0

    def _row(self, seq: tuple[int, ...]) -> np.ndarray:
        probs = np.full(V, 1e-3)
        for tok, p in self.table.get(seq, {}).items():
            probs[tok] = p
        return np.log(probs / probs.sum())

    def start(self, prompt_ids: list[int], prefix: object | None = None) -> tuple[list[tuple[int, ...]], np.ndarray]:
        return [()], self._row(())

    def advance(self, state: list[tuple[int, ...]], parents: list[int], tokens: list[int]):  # noqa: ANN201
        self.advances += 1
        new = [state[p] + (t,) for p, t in zip(parents, tokens, strict=True)]
        return new, np.stack([self._row(s) for s in new])


TRIE = NameTrie(names=["Ab", "A", "Cde", "Cdf"], sequences=[[2, 3, END], [2, END], [4, 5, 6, END], [4, 5, 7, END]],
                entity_ids=[["e1"], ["e2", "e3"], ["e4"], ["e5"]], end_id=END)
TABLE = {(): {2: 0.6, 4: 0.4}, (2,): {3: 0.7, END: 0.3}, (2, 3): {END: 0.9}, (4,): {5: 0.99},
         (4, 5): {6: 0.5, 7: 0.45}, (4, 5, 6): {END: 0.9}, (4, 5, 7): {END: 0.95}}


def brute_force(lm: TableLM, trie: NameTrie) -> list[tuple[str, float]]:
    out = []
    for name, seq in zip(trie.names, trie.sequences, strict=True):
        out.append((name, sum(float(lm._row(tuple(seq[:i]))[t]) for i, t in enumerate(seq))))
    return sorted(out, key=lambda x: -x[1])


def test_beams_are_complete_names_ranked_by_exact_logprob() -> None:
    lm = TableLM(TABLE)
    beams = ConstrainedBeamSearch(lm, TRIE, num_beams=4, max_new_tokens=8).search([7, 7])
    expected = brute_force(lm, TRIE)
    assert [b.name for b in beams] == [n for n, _ in expected]
    for b, (_, lp) in zip(beams, expected, strict=True):
        assert b.logprob == pytest.approx(lp, abs=1e-9)
        assert b.token_ids[-1] == END and TRIE.name_of(b.token_ids) == b.name
        assert b.confidence == pytest.approx(math.exp(lp / len(b.token_ids)))


def test_greedy_and_deterministic() -> None:
    one = ConstrainedBeamSearch(TableLM(TABLE), TRIE, num_beams=1, max_new_tokens=8)
    first = one.search([1])
    assert [b.name for b in first] == ["Ab"] and one.search([1]) == first


def test_stops_early_and_respects_max_new_tokens() -> None:
    lm = TableLM(TABLE)
    beams = ConstrainedBeamSearch(lm, TRIE, num_beams=2, max_new_tokens=8).search([1])
    assert [b.name for b in beams] == ["Ab", "Cde"]  # = the top 2 of brute_force()
    assert lm.advances == 3  # 4 steps: the 4-token names finish the search, nothing runs past them
    short = ConstrainedBeamSearch(TableLM(TABLE), TRIE, num_beams=4, max_new_tokens=2).search([1])
    assert [b.name for b in short] == ["A"]  # only the 2-token name fits in two steps
    assert ConstrainedBeamSearch(TableLM(TABLE), TRIE, num_beams=4, max_new_tokens=1).search([1]) == []


def test_eval_counts_name_collision_answers() -> None:
    from mel.eval import evaluate, format_table, top_flag_stats

    mentions = [Mention("m1", "a", gold="e2"), Mention("m2", "b", gold="e3"), Mention("m3", "c", gold="e4")]

    def res(mid: str, eid: str, flag: float | None) -> LinkResult:
        scores = {"final": 0.5} if flag is None else {"final": 0.5, "name_collision": flag}
        return LinkResult(mid, eid, 0.5, [Candidate(eid, eid, 0.5, scores)], method="gemel")

    results = [res("m1", "e2", 1.0), res("m2", "e2", 1.0), res("m3", "e4", 0.0)]
    report = evaluate(mentions, results, {"e2", "e3", "e4"})
    assert report["flags"]["name_collision"] == {"results": 2, "correct": 1}
    assert "name_collision: 2 answers (1 correct)" in format_table(report)
    assert top_flag_stats([res("m3", "e4", None)], [True], "name_collision") == {"results": 0, "correct": 0}


def test_live_beams_that_cannot_win_are_not_extended() -> None:
    lm = TableLM({**TABLE, (2,): {END: 0.9, 3: 0.09}})
    beams = ConstrainedBeamSearch(lm, TRIE, num_beams=1, max_new_tokens=8).search([1])
    assert [b.name for b in beams] == ["A"] and lm.advances == 1  # "Ab" (< 0.6*0.09) is never extended
