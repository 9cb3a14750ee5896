"""The NIL protocol: withheld golds (drawn deterministically, shared golds handled, never returned by any search or
step), the threshold calibration on constructed score distributions, and calibration files refused for another
index, method or configuration."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import ClassVar

import pytest

from mel.calibration import (
    ScorePoint,
    auc,
    best_threshold,
    calibrate,
    calibration_path,
    outcome,
    read_calibration,
    resolve_nil,
    write_calibration,
)
from mel.config import load_config
from mel.errors import ArtifactMismatch, InputError
from mel.index.manifest import index_id, read_manifest
from mel.methods import MethodSpec, registry
from mel.types import Mention
from mel.withhold import choose_withheld
from tests.conftest import REPO
from tests.doubles.encoders import HashingTextEncoder

DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"
DEMO_MENTIONS = REPO / "data" / "demo" / "mentions.jsonl"


@pytest.fixture(scope="module")
def hashed_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.index import run_index_local

    return run_index_local(DEMO_KB, tmp_path_factory.mktemp("nil") / "idx", load_config(None), HashingTextEncoder())


def _demo_mentions() -> list[Mention]:
    from mel.mentions import read_mentions

    return list(read_mentions(DEMO_MENTIONS))


def _kb_ids() -> set[str]:
    return {json.loads(line)["id"] for line in DEMO_KB.read_text().splitlines() if line.strip()}


# ----------------------------------------------------------------------------- withheld draw
def test_withheld_draw_is_seeded_and_counts_in_kb_mentions_only() -> None:
    ms = _demo_mentions()
    kb = _kb_ids()
    in_kb = [m for m in ms if m.gold in kb]
    a = choose_withheld(ms, kb, 0.2, seed=3)
    # the order of the split does not change the draw
    assert set(a.drawn) == set(choose_withheld(list(reversed(ms)), kb, 0.2, seed=3).drawn)
    assert len(a.drawn) == round(0.2 * len(in_kb))
    assert all(m.gold in kb for m in ms if m.id in a.drawn)
    assert set(a.drawn) != set(choose_withheld(ms, kb, 0.2, seed=4).drawn)
    assert choose_withheld(ms, kb, 0.0).entities == frozenset()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        choose_withheld(ms, kb, 1.0)


def test_mentions_sharing_a_withheld_gold_all_expect_nil() -> None:
    ms = [Mention(f"m{i}", "x", "", gold="e1" if i < 3 else f"e{i}") for i in range(10)]
    kb = {f"e{i}" for i in range(10)}
    for seed in range(40):
        w = choose_withheld(ms, kb, 0.1, seed=seed)  # one mention drawn
        if "e1" in w.entities:
            assert {"m0", "m1", "m2"} <= set(w.nil_mentions)
            assert w.summary(10)["shared_gold_extra"] == 2
            break
    else:
        pytest.fail("no seed drew a mention of e1")


# ----------------------------------------------------------------------------- masked index and runner
def test_withheld_entities_never_come_back_from_search(hashed_index: Path) -> None:
    from mel.index.artifact import IndexArtifact
    from mel.index.masked import MaskedIndex

    art = IndexArtifact.load(hashed_index)
    enc = HashingTextEncoder()
    hidden = set(art.ids[::3])
    masked = MaskedIndex(art, hidden | {"not-in-the-kb"})
    assert masked.hidden == frozenset(hidden)
    assert len(masked) == len(art) - len(hidden)
    queries = enc.encode([art.text(e) for e in art.ids])  # each entity's own text: it would rank itself first
    scores, ids = masked.search_text(queries, 10)
    assert scores.shape == (len(art), 10)
    for row in ids:
        assert len(row) == 10 and not set(row) & hidden
    for e in hidden:
        assert e not in masked
        with pytest.raises(KeyError, match="withheld"):
            masked.name(e)
        with pytest.raises(KeyError, match="withheld"):
            masked.text(e)
    some = next(iter(hidden))
    with pytest.raises(KeyError, match="withheld"):
        masked.text_scores(queries[0], [some])
    # asking for more than is visible gives everything visible, never a hidden one
    _, everything = masked.search_text(queries[:1], len(art))
    assert sorted(everything[0]) == sorted(set(art.ids) - hidden)


def test_runner_withholding_turns_those_mentions_into_misses(hashed_index: Path) -> None:
    from mel.runner import Runner

    cfg = load_config(None, ["method=retrieval", "retrieval.top_k=10"])
    runner = Runner.load(cfg, str(hashed_index), text_encoder=HashingTextEncoder())
    ms = [m for m in _demo_mentions() if m.gold is not None]
    hidden = {m.gold for m in ms[:6]}
    masked = runner.withholding(hidden)
    assert masked.withheld == frozenset(hidden)
    for r in masked.link(ms):
        assert not {c.entity_id for c in r.candidates} & hidden
        assert r.entity_id not in hidden
        assert len(r.candidates) == 10
    # the original runner still sees everything
    assert {c.entity_id for r in runner.link(ms) for c in r.candidates} & hidden


def test_a_step_that_bypasses_the_index_is_caught() -> None:
    from mel.parts import Parts
    from mel.runner import Runner
    from mel.steps import register_step
    from mel.steps.base import Step
    from mel.types import Candidate

    @register_step
    class Leaky(Step):
        name: ClassVar[str] = "leaky-test-step"

        def run(self, states):  # noqa: ANN001, ANN202
            for s in states:
                s.candidates = [Candidate("demo:jaguar-animal", "Jaguar", 1.0, {})]
            return states

    registry.register_method(MethodSpec("leaky-test", ("leaky-test-step", "nil"), score="1.0"))

    class FakeIndex:
        path = None
        ids = ["demo:jaguar-animal", "demo:jaguar-cars"]

        def __contains__(self, e: object) -> bool:
            return e in self.ids

        def __len__(self) -> int:
            return 2

    cfg = load_config(None, ["nil.calibration=off"])
    runner = Runner(cfg, Parts(index=FakeIndex()), method="leaky-test", withheld={"demo:jaguar-animal"})
    with pytest.raises(RuntimeError, match="withheld entities .*jaguar-animal.* came back"):
        runner.link([Mention("m", "jaguar", "")])


def test_the_registry_refuses_a_method_without_a_declared_score() -> None:
    with pytest.raises(ValueError, match="does not say what its final score is"):
        registry.register_method(MethodSpec("scoreless-test", ("retrieve", "nil")))
    for name in registry.names():
        assert registry.get(name).score.strip(), name


# ----------------------------------------------------------------------------- choosing the threshold
def _points(in_kb: list[tuple[float, bool]], nil: list[float]) -> list[ScorePoint]:
    return [ScorePoint(s, ok, False) for s, ok in in_kb] + [ScorePoint(s, False, True) for s in nil]


def test_threshold_maximises_accuracy_midway_between_dev_scores() -> None:
    pts = _points([(0.8, True), (0.85, True), (0.9, True), (0.95, True), (0.6, False)], [0.3, 0.4, 0.5])
    t = best_threshold(pts)
    # NIL for 0.3..0.5; cutting above the wrong in-KB answer (0.6) scores the same, and the tie goes to fewer NILs
    assert t == pytest.approx((0.5 + 0.6) / 2)
    at = outcome(pts, t)
    assert at["accuracy"] == pytest.approx(100 * 7 / 8)
    assert at["nil_recall"] == 100 and at["nil_precision"] == 100
    assert at["in_kb_accuracy"] == pytest.approx(80)
    assert auc(pts) == pytest.approx(1.0)


def test_threshold_on_overlapping_distributions_and_edge_cases() -> None:
    rng = random.Random(0)
    pts = _points([(rng.gauss(0.8, 0.1), True) for _ in range(400)], [rng.gauss(0.5, 0.1) for _ in range(100)])
    t = best_threshold(pts)
    assert t is not None and 0.55 < t < 0.75
    # the chosen threshold beats every other cut on these points
    grid = [i / 200 for i in range(200)]
    assert outcome(pts, t)["accuracy"] >= max(outcome(pts, g)["accuracy"] for g in grid) - 1e-9
    assert 0.95 < auc(pts) < 1.0
    # nothing to gain from NIL: no threshold
    assert best_threshold(_points([(0.2, True), (0.3, True)], [0.9])) is None
    # equal scores cannot be split
    assert best_threshold(_points([(0.5, True), (0.5, True)], [0.5, 0.5, 0.5])) is not None
    # a score that does not separate
    noise = _points([(rng.random(), True) for _ in range(200)], [rng.random() for _ in range(200)])
    cal = calibrate(noise, method="m", method_hash="h", index_id="i")
    assert not cal.separable and abs(cal.auc - 0.5) < 0.1
    with pytest.raises(InputError, match="no NIL-expected"):
        calibrate(_points([(0.5, True)], []), method="m", method_hash="h", index_id="i")


# ----------------------------------------------------------------------------- calibration files
def _write(hashed_index: Path, cfg, method: str = "retrieval", threshold: float = 0.5, **over) -> Path:  # noqa: ANN001
    spec = registry.get(method)
    pts = _points([(0.8, True), (0.9, True)], [0.2, 0.3])
    cal = calibrate(pts, method=method, method_hash=spec.config_hash(cfg),
                    index_id=index_id(read_manifest(hashed_index)), score=spec.score)
    cal.threshold = threshold
    for k, v in over.items():
        setattr(cal, k, v)
    return write_calibration(cal, calibration_path(hashed_index, method))


def test_calibration_is_applied_for_its_index_and_refused_for_another(hashed_index: Path, tmp_path: Path) -> None:
    import shutil

    from mel.index.artifact import IndexArtifact
    from pipelines.index import run_index_local

    cfg = load_config(None, ["method=retrieval", "nil.threshold=0.1"])
    spec = registry.get("retrieval")
    art = IndexArtifact.load(hashed_index)
    assert resolve_nil(cfg, spec, art)[0].nil.threshold == 0.1  # no calibration yet: the configured threshold
    path = _write(hashed_index, cfg, threshold=0.42)
    try:
        new, info = resolve_nil(cfg, spec, art)
        assert new.nil.threshold == 0.42 and info["source"] == str(path)
        assert read_calibration(path).threshold == 0.42
        off = load_config(None, ["nil.calibration=off", "nil.threshold=0.1"])
        assert resolve_nil(off, spec, art)[0].nil.threshold == 0.1
        # the runner uses it
        from mel.runner import Runner

        r = Runner.load(cfg, str(hashed_index), text_encoder=HashingTextEncoder())
        assert r.cfg.nil.threshold == 0.42 and r.nil["threshold"] == 0.42
        # another method configuration (the settings its steps read) is refused, saying what to rerun
        with pytest.raises(ArtifactMismatch, match="another configuration of method 'retrieval'.*mel calibrate"):
            resolve_nil(load_config(None, ["retrieval.top_k=7"]), spec, art)
        # NIL settings and serving settings do not count
        resolve_nil(load_config(None, ["nil.threshold=0.9", "serve.port=9"]), spec, art)
        # the same file for another index (of a KB with one entity fewer) is refused
        smaller = tmp_path / "kb.jsonl"
        smaller.write_text("\n".join(DEMO_KB.read_text().splitlines()[1:]) + "\n")
        other = run_index_local(smaller, tmp_path / "other", load_config(None), HashingTextEncoder())
        shutil.copytree(hashed_index / "calibration", other / "calibration")
        with pytest.raises(ArtifactMismatch, match="made for index .* this index"):
            resolve_nil(cfg, spec, IndexArtifact.load(other))
        # a file for another method named explicitly is refused; a missing explicit file is an input error
        with pytest.raises(ArtifactMismatch, match="for method 'retrieval', not 'llm-select'"):
            resolve_nil(load_config(None, [f"nil.calibration={path}"]), registry.get("llm-select"), art)
        with pytest.raises(InputError, match="calibration file not found"):
            resolve_nil(load_config(None, [f"nil.calibration={tmp_path / 'none.json'}"]), spec, art)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**json.loads(path.read_text()), "threshold": "high"}))
        with pytest.raises(InputError, match="threshold"):
            read_calibration(bad)
    finally:
        shutil.rmtree(hashed_index / "calibration")


def test_serve_builder_reads_the_calibration(hashed_index: Path) -> None:
    import shutil

    from serve.app import calibrated

    cfg = load_config(None, ["method=retrieval"])
    assert calibrated(cfg, "/nonexistent/index")[1]["source"] == "config"
    path = _write(hashed_index, cfg, threshold=0.37)
    try:
        new, info = calibrated(cfg, str(hashed_index))
        assert new.nil.threshold == 0.37 and info["source"] == str(path)
        with pytest.raises(ArtifactMismatch):
            calibrated(load_config(None, ["method=retrieval", "retrieval.top_k=3"]), str(hashed_index))
    finally:
        shutil.rmtree(hashed_index / "calibration")


def test_nil_curve_plot_is_a_png(tmp_path: Path) -> None:
    from PIL import Image

    from mel.plot import plot_nil_curve

    rng = random.Random(1)
    pts = _points([(rng.gauss(0.8, 0.1), True) for _ in range(50)], [rng.gauss(0.5, 0.1) for _ in range(20)])
    cal = calibrate(pts, method="m", method_hash="h", index_id="i", protocol={"dataset": "d", "split": "dev"})
    out = plot_nil_curve(cal, tmp_path / "curve.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
