"""GEMEL in-context demonstrations: nearest pool mentions, most similar last, the query excluded, NIL skipped,
trimmed to the context budget (least similar dropped first)."""

from __future__ import annotations

import numpy as np
import pytest

from mel.errors import InputError
from mel.gemel.demos import Demo, DemoPool, trim_to_budget
from mel.gemel.prompt import HEADER, PromptFormat, cut, mention_line
from mel.types import Mention
from tests.doubles.encoders import HashingTextEncoder
from tests.unit.test_gemel_trie import WordTokenizer


def _pool(sims: list[float]) -> tuple[DemoPool, np.ndarray]:
    """Pool whose i-th vector has cosine ``sims[i]`` with the returned query vector."""
    q = np.array([1.0, 0.0], dtype=np.float32)
    vecs = np.array([[s, np.sqrt(max(0.0, 1 - s * s))] for s in sims], dtype=np.float32)
    mentions = [Mention(f"t{i}", f"surface {i}", f"context {i}", gold=f"e{i}") for i in range(len(sims))]
    return DemoPool(mentions, [f"Name {i}" for i in range(len(sims))], vecs), q


def test_most_similar_last_and_n_limit() -> None:
    pool, q = _pool([0.1, 0.9, 0.5, 0.7, 0.3])
    query = Mention("x", "query", "")
    demos = pool.nearest(query, q, 3)
    assert [d.mention.id for d in demos] == ["t2", "t3", "t1"]  # 0.5, 0.7, 0.9: the most similar nearest the query
    assert [d.name for d in demos] == ["Name 2", "Name 3", "Name 1"]
    assert demos[-1].similarity == pytest.approx(0.9, abs=1e-6)
    assert len(pool.nearest(query, q, 50)) == 5 and pool.nearest(query, q, 0) == []


def test_ties_break_by_pool_order() -> None:
    pool, q = _pool([0.5, 0.8, 0.5, 0.5])
    demos = pool.nearest(Mention("x", "q"), q, 3)
    assert [d.mention.id for d in demos] == ["t2", "t0", "t1"]  # among the 0.5s pool order: t0 before t2


def test_query_itself_is_excluded() -> None:
    pool, q = _pool([0.1, 0.9, 0.5])
    itself = pool.mentions[1]
    assert [d.mention.id for d in pool.nearest(itself, q, 2)] == ["t0", "t2"]
    # same id but another text (ids of another split): a different mention, kept
    namesake = Mention("t1", "other surface", "other context")
    assert [d.mention.id for d in pool.nearest(namesake, q, 2)] == ["t2", "t1"]


def test_build_skips_nil_and_unknown_golds() -> None:
    mentions = [Mention("a", "Jaguar", "big cat", gold="e:cat"), Mention("b", "Mercury", "", gold=None),
                Mention("c", "Paris", "city", gold="e:gone"), Mention("d", "Java", "coffee", gold="e:java")]
    names = {"e:cat": "Jaguar", "e:java": "Java coffee"}
    pool = DemoPool.build(mentions, names.get, HashingTextEncoder(64))
    assert [m.id for m in pool.mentions] == ["a", "d"] and pool.names == ["Jaguar", "Java coffee"]
    assert (pool.skipped_nil, pool.skipped_not_in_kb) == (1, 1)
    enc = HashingTextEncoder(64)
    demos = pool.nearest(Mention("q", "java", "a cup of coffee"), enc.encode(["java. a cup of coffee"])[0], 2)
    assert demos[-1].mention.id == "d"
    with pytest.raises(InputError, match="none of 1 mentions"):
        DemoPool.build([Mention("b", "x", gold=None)], names.get, enc)


def test_trim_drops_least_similar_first() -> None:
    demos = ["least", "mid", "most"]
    cost = {"least": 5, "mid": 3, "most": 4}.__getitem__
    assert trim_to_budget(demos, cost, 100) == demos
    assert trim_to_budget(demos, cost, 7) == ["mid", "most"]
    assert trim_to_budget(demos, cost, 6) == ["most"]
    assert trim_to_budget(demos, cost, 3) == []


def test_prompt_fits_the_budget_and_keeps_order() -> None:
    tok = WordTokenizer()
    fmt = PromptFormat(tok, max_mention_chars=40)
    pool, q = _pool([0.2, 0.6, 0.4])
    query = Mention("x", "Jaguar", "The jaguar stalked a caiman along the riverbank in the Pantanal at dusk.")
    demos = pool.nearest(query, q, 3)
    full, kept = fmt.build(query, demos, 10_000)
    assert kept == demos
    expected = tok.encode(HEADER) + [t for d in demos for t in fmt.demo_ids(d)] + fmt.query_ids(query)
    assert full == expected
    assert fmt.demo_ids(demos[0])[-1] == fmt.end_id  # a demonstration answer is the trie sequence of its name
    one = len(fmt.demo_ids(demos[-1]))
    budget = len(tok.encode(HEADER)) + len(fmt.query_ids(query)) + one + 1
    ids, kept = fmt.build(query, demos, budget)
    assert [d.mention.id for d in kept] == ["t1"] and len(ids) <= budget  # only the most similar fits
    assert ids[-len(fmt.query_ids(query)):] == fmt.query_ids(query)
    tiny, kept = fmt.build(query, demos, 5)
    assert kept == [] and len(tiny) == 5 and tiny[-1] == tok.encode(" ->")[0]  # the query's tail survives


def test_mention_line_format() -> None:
    line = mention_line(Mention("m", "Jaguar ", "In the  Pantanal a jaguar"), 300)
    assert line == "In the Pantanal a jaguar | Jaguar ->"
    assert mention_line(Mention("m", "Jaguar"), 300) == "Jaguar ->"
    assert cut("one two three four", 9) == "one two" and cut("abcdefghij", 4) == "abcd"
    assert isinstance(Demo(Mention("m", "s"), "n", 0.5).similarity, float)
