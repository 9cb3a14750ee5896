"""GEMEL's constrained generation on the real LLM (SmolLM2-135M through transformers): over the demo KB's name
trie every beam is a KB name, the search is deterministic, wider beams never find a worse best name, and a beam's
score is the model's own log-probability of the name's tokens after the prompt (checked by teacher forcing)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lm(llm_dir: str):  # noqa: ANN201
    from mel.gemel.lm import HFPrefixLM

    return HFPrefixLM(llm_dir)


@pytest.fixture(scope="module")
def trie(lm):  # noqa: ANN001, ANN201
    from mel.gemel.trie import NameTrie
    from mel.kb import read_kb

    kb = read_kb(REPO / "data" / "demo" / "kb" / "entities.jsonl")
    return NameTrie.build(((e.id, [e.name, *e.aliases]) for e in kb), lm.tokenizer, kb_hash=kb.content_hash())


def _prompt(lm) -> list[int]:  # noqa: ANN001
    from mel.gemel.demos import Demo
    from mel.gemel.prompt import PromptFormat
    from mel.types import Mention

    fmt = PromptFormat(lm.tokenizer)
    demos = [Demo(Mention("d1", "Jobs", "Jobs founded Apple in a garage."), "Steve Jobs", 0.5),
             Demo(Mention("d2", "the Queen", "Freddie Mercury sang with the Queen."), "Queen", 0.7)]
    ids, kept = fmt.build(Mention("q", "Mercury", "Mercury is the closest planet to the Sun."), demos, budget=512)
    assert kept == demos
    return ids


def test_constrained_beams_are_kb_names_scored_by_the_model(lm, trie) -> None:  # noqa: ANN001
    import torch

    from mel.gemel.decode import ConstrainedBeamSearch

    prompt = _prompt(lm)
    beams = ConstrainedBeamSearch(lm, trie, num_beams=4).search(prompt)
    assert 1 <= len(beams) <= 4 and all(trie.ids_for(b.name) for b in beams)
    assert [b.logprob for b in beams] == sorted((b.logprob for b in beams), reverse=True)
    again = ConstrainedBeamSearch(lm, trie, num_beams=4).search(prompt)
    assert [(b.name, b.logprob) for b in again] == [(b.name, b.logprob) for b in beams]  # deterministic
    greedy = ConstrainedBeamSearch(lm, trie, num_beams=1).search(prompt)
    assert len(greedy) == 1 and beams[0].logprob >= greedy[0].logprob - 1e-6
    # teacher forcing: the model's log-probability of prompt -> name tokens equals the beam's score
    for b in beams:
        ids = torch.tensor([prompt + list(b.token_ids)])
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
        want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(b.token_ids))
        assert math.isclose(b.logprob, want, abs_tol=2e-3), (b.name, b.logprob, want)
        assert b.token_ids[-1] == trie.end_id and 0 < b.confidence <= 1


def test_gemel_through_serve_answers_like_the_runner(demo_index, ray_local, text_encoder, lm,  # noqa: ANN001
                                                     tmp_path) -> None:  # noqa: ANN001
    """`gemel` (demonstrations from the demo mentions, generation on the Retriever host) through the Serve app gives
    the runner's answers; the demonstration index and the trie are stored beside the index once."""
    import httpx

    from mel.config import load_config
    from mel.mentions import read_mentions
    from mel.runner import Runner
    from tests.conftest import free_port, serve_app

    mentions_file = REPO / "data" / "demo" / "mentions.jsonl"
    ms = list(read_mentions(mentions_file))[:6]
    sets = {"method": "gemel", "gemel.demos.mentions": str(mentions_file), "gemel.demos.n": 4, "gemel.beams": 2,
            "gemel.demos.index_dir": str(tmp_path / "demos")}
    offline = Runner.load(load_config(None, sets), str(demo_index), text_encoder=text_encoder, gemel_lm=lm).link(ms)
    assert (tmp_path / "demos" / "manifest.json").is_file()
    port = free_port()
    scfg = load_config(None, {**sets, "serve.port": port, "serve.app_name": "gemel", "serve.route_prefix": "/gemel"})
    with serve_app(scfg, demo_index) as url:
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["steps"] == ["demonstrate", "generate", "name_to_id", "nil"]
        assert health["deployments"] == ["Retriever"]
        body = {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context} for m in ms]}
        r = httpx.post(f"{url}/v1/link", json=body, timeout=300)
        assert r.status_code == 200, r.text
        online = r.json()["results"]
    for e, o in zip(offline, online, strict=True):
        assert o["entity_id"] == e.entity_id and o["method"] == "gemel"
        assert [c["entity_id"] for c in o["candidates"]] == [c.entity_id for c in e.candidates]
        assert [c["score"] for c in o["candidates"]] == pytest.approx([c.score for c in e.candidates], abs=1e-4)
