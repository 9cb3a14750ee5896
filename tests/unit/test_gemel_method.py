"""The `gemel` methods on test doubles: a word tokenizer and an LM that prefers the query line's words, over the
demo KB (hashed index). Demonstrations come from a stored demonstration index (built once, reused, refused when made
otherwise); generated names map to every bearer, collisions resolved by similarity and flagged for the evaluator;
withheld entities never come back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mel.config import load_config
from mel.errors import ArtifactMismatch
from tests.doubles.encoders import HashingTextEncoder
from tests.unit.test_gemel_trie import NEWLINE, WordTokenizer

REPO = Path(__file__).resolve().parents[2]
DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"
DEMO_MENTIONS = REPO / "data" / "demo" / "mentions.jsonl"
VOCAB = 100_010


class QueryWordsLM:
    """Test double of the PrefixLM protocol: after the prompt, a token of the query line (the text after the last
    newline) is likely, the end marker fairly likely, anything else unlikely."""

    fingerprint = "query-words"
    hidden_size = 4
    max_positions = 4096

    def __init__(self) -> None:
        self.tokenizer = WordTokenizer()
        self.prompts: list[list[int]] = []

    def _row(self, favoured: set[int]) -> np.ndarray:
        row = np.full(VOCAB, 1e-6)
        row[list(favoured)] = 0.5
        row[NEWLINE] = 0.3
        return np.log(row / row.sum())

    def start(self, prompt_ids: list[int], prefix: object | None = None):  # noqa: ANN201
        self.prompts.append(list(prompt_ids))
        last = len(prompt_ids) - 1 - prompt_ids[::-1].index(NEWLINE) if NEWLINE in prompt_ids else -1
        favoured = set(prompt_ids[last + 1:])
        return [favoured], self._row(favoured)

    def advance(self, state, parents, tokens):  # noqa: ANN001, ANN201
        new = [state[p] for p in parents]
        return new, np.stack([self._row(f) for f in new])


@pytest.fixture(scope="module")
def idx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.index import run_index_local

    return run_index_local(DEMO_KB, tmp_path_factory.mktemp("gemel") / "idx", load_config(None), HashingTextEncoder())


def _cfg(*sets: str):  # noqa: ANN202
    return load_config(None, ["method=gemel", f"gemel.demos.mentions={DEMO_MENTIONS}", "gemel.demos.n=3", *sets])


def _mentions() -> list:
    from mel.mentions import read_mentions

    return list(read_mentions(DEMO_MENTIONS))


def test_gemel_generates_kb_names_and_flags_collisions(idx: Path) -> None:
    from mel.eval import evaluate
    from mel.kb import read_kb
    from mel.runner import Runner

    lm = QueryWordsLM()
    runner = Runner.load(_cfg(), str(idx), text_encoder=HashingTextEncoder(), gemel_lm=lm)
    assert runner.step_names == ["demonstrate", "generate", "name_to_id", "nil"]
    ms = _mentions()
    results = runner.link(ms)
    kb = read_kb(DEMO_KB)
    names = {e.id: {e.name, *e.aliases} for e in kb}
    assert any(r.candidates for r in results)
    for r in results:
        for c in r.candidates:
            assert c.entity_id in names and 0 < c.score <= 1 and c.scores["generated"] == c.score
        if r.candidates:
            top = r.candidates[0]
            assert r.entity_id == top.entity_id and r.method == "gemel"
            assert top.scores["name_collision"] == (1.0 if top.scores["bearers"] > 1 else 0.0)
    # demonstrations were in the prompts: 3 labelled lines before the query, never the query itself
    assert all(p.count(NEWLINE) >= 4 for p in lm.prompts)
    report = evaluate(ms, results, kb)
    flagged = sum(1 for r in results if r.candidates and r.candidates[0].scores["name_collision"] == 1.0)
    assert report["flags"]["name_collision"]["results"] == flagged
    # collisions exist in the demo KB ("Jaguar", "Mercury") and are resolved by similarity among the bearers
    jag = [r for m, r in zip(ms, results, strict=True) if r.candidates and r.candidates[0].scores["bearers"] > 1]
    assert jag and all("retrieval" in r.candidates[0].scores for r in jag)


def test_the_demonstration_index_is_stored_reused_and_refused_when_made_otherwise(idx: Path, tmp_path: Path) -> None:
    from mel.runner import Runner

    Runner.load(_cfg(), str(idx), text_encoder=HashingTextEncoder(), gemel_lm=QueryWordsLM())
    dirs = sorted((idx / "extras").glob("gemel-demos-*"))
    assert dirs and (dirs[0] / "manifest.json").is_file()
    meta = json.loads((dirs[0] / "manifest.json").read_text())
    assert meta["source"] == f"file:{DEMO_MENTIONS}" and meta["encoder_id"] == HashingTextEncoder().id
    mtime = (dirs[0] / "vectors.npy").stat().st_mtime_ns
    Runner.load(_cfg(), str(idx), text_encoder=HashingTextEncoder(), gemel_lm=QueryWordsLM())
    assert (dirs[0] / "vectors.npy").stat().st_mtime_ns == mtime  # reused, not rebuilt
    own = tmp_path / "demos"
    Runner.load(_cfg(f"gemel.demos.index_dir={own}"), str(idx), text_encoder=HashingTextEncoder(),
                gemel_lm=QueryWordsLM())
    assert (own / "manifest.json").is_file()
    with pytest.raises(ArtifactMismatch, match="template"):
        Runner.load(_cfg(f"gemel.demos.index_dir={own}", "gemel.demos.template='{surface}'"), str(idx),
                    text_encoder=HashingTextEncoder(), gemel_lm=QueryWordsLM())


def test_gemel_without_demonstrations_and_with_withheld_entities(idx: Path) -> None:
    from mel.errors import InputError
    from mel.runner import Runner

    lm = QueryWordsLM()
    runner = Runner.load(load_config(None, ["method=gemel-no-icl"]), str(idx), text_encoder=HashingTextEncoder(),
                         gemel_lm=lm)
    assert runner.step_names == ["generate", "name_to_id", "nil"]
    ms = _mentions()
    results = runner.link(ms)
    assert all(p.count(NEWLINE) == 1 for p in lm.prompts)  # the header line, then the query
    hidden = {r.entity_id for r in results if r.entity_id}
    withheld = runner.withholding(hidden).link(ms)  # the runner checks none comes back
    assert not {c.entity_id for r in withheld for c in r.candidates} & hidden
    with pytest.raises(InputError, match="need a pool"):
        Runner.load(load_config(None, ["method=gemel"]), str(idx), text_encoder=HashingTextEncoder(),
                    gemel_lm=QueryWordsLM())
