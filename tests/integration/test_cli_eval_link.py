"""`mel eval` on a RichpediaMEL slice, LLM selection through the evaluator, and `mel link` on Ray Data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.entrypoints.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def richpedia_index(shared_data: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full RichpediaMEL KB (17,805 entities) indexed by `mel index --dataset` on Ray Data."""
    out = tmp_path_factory.mktemp("rp") / "index"
    assert main(["index", "--dataset", "richpedia-mel", "--data-dir", str(shared_data), "--out", str(out),
                 "--set", "pipelines.index.workers=2", "--set", "pipelines.index.batch_size=512"]) == 0
    return out


def test_mel_eval_on_richpedia_slice(richpedia_index: Path, shared_data: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    rc = main(["eval", "--dataset", "richpedia-mel", "--split", "test", "--index", str(richpedia_index),
               "--data-dir", str(shared_data), "--method", "retrieval", "--limit", "200",
               "--report", str(report_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["counts"]["mentions"] == 200
    rank = report["ranking"]["all_mentions"]
    # Measured on the full test split: H@1 93.4, H@10 98.9 (MiniLM, "name. attributes" vs "mention. sentence").
    assert rank["hits@1"] >= 85 and rank["hits@10"] >= 95, rank
    assert rank["hits@1"] <= rank["hits@5"] <= rank["hits@10"] <= rank["hits@20"]
    assert "retrieve" in report["latency_ms"]
    out = capsys.readouterr().out
    assert "H@1" in out and "MRR" in out and "mentions 200" in out


def test_eval_refuses_an_index_of_another_kb(demo_index: Path, shared_data: Path) -> None:
    rc = main(["eval", "--dataset", "richpedia-mel", "--index", str(demo_index), "--data-dir", str(shared_data),
               "--method", "retrieval", "--limit", "5"])
    assert rc == 2


def test_llm_selection_through_the_evaluator(richpedia_index: Path, shared_data: Path, vllm_engine,
                                             text_encoder) -> None:
    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.methods import build_linker

    cfg = load_config(None, ["method=llm-select", "selection.candidates=4"])
    linker = build_linker(cfg, str(richpedia_index), engine=vllm_engine, text_encoder=text_encoder)
    report = commands.evaluate(cfg, dataset="richpedia-mel", split="test", index_dir=str(richpedia_index),
                               limit=16, data_dir=str(shared_data), linker=linker, batch_size=8)
    assert report["methods"] == ["llm-select"]
    assert report["counts"]["mentions"] == 16
    assert {"retrieve", "select"} <= set(report["latency_ms"])
    # Fusion keeps retrieval's candidates: recall is unchanged by selection.
    assert report["retrieval"]["recall_all_mentions"] >= 90


def test_mel_link_batch_on_ray_matches_in_process(demo_index: Path, ray_local, text_encoder, tmp_path: Path) -> None:
    from mel.config import load_config
    from mel.mentions import read_mentions
    from mel.methods import build_linker

    mentions = REPO / "data" / "demo" / "mentions.jsonl"
    out = tmp_path / "out" / "results.jsonl"
    rc = main(["link", "--index", str(demo_index), "--mentions", str(mentions), "--out", str(out),
               "--method", "retrieval", "--set", "pipelines.link.batch_size=7"])
    assert rc == 0
    batch = [json.loads(x) for x in out.read_text().splitlines()]
    ms = read_mentions(mentions)
    assert [r["mention_id"] for r in batch] == [m.id for m in ms]
    linker = build_linker(load_config(None), str(demo_index), method="retrieval", text_encoder=text_encoder)
    online = linker.link(list(ms))
    for b, o in zip(batch, online):
        assert b["entity_id"] == o.entity_id
        assert [c["entity_id"] for c in b["candidates"]] == [c.entity_id for c in o.candidates]
        assert b["score"] == pytest.approx(o.score, abs=1e-5)
    assert not list(out.parent.glob(".*.tmp")), "temp files left behind"


def test_mel_link_reports_bad_mentions_file(demo_index: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "surface": "Paris"}\n{"id": "b"}\n')
    out = tmp_path / "r.jsonl"
    rc = main(["link", "--local", "--index", str(demo_index), "--mentions", str(bad), "--out", str(out),
               "--method", "retrieval"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "surface" in err
    assert not out.exists()


def test_calibrate_on_dev_then_eval_test_with_withheld_golds(
        richpedia_index: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The NIL protocol end to end on RichpediaMEL: `mel calibrate` on a dev sample (golds of 10% withheld), then
    `mel eval --nil-withhold` on a test sample reading that calibration; a changed method config is refused."""
    cal_path, png = tmp_path / "cal.json", tmp_path / "curve.png"
    common = ["--index", str(richpedia_index), "--data-dir", str(shared_data), "--method", "retrieval"]
    assert main(["calibrate", "--dataset", "richpedia-mel", *common, "--sample", "300", "--out", str(cal_path),
                 "--plot", str(png)]) == 0
    cal = json.loads(cal_path.read_text())
    assert cal["method"] == "retrieval" and cal["dev"]["split"] == "dev" and cal["dev"]["mentions"] == 300
    assert cal["dev"]["mentions_drawn"] == 30 and 0 < cal["dev"]["entities_hidden"] <= 30
    assert cal["threshold"] is not None
    # measured on 1,000 dev mentions: AUC 0.91; the threshold beats never answering NIL
    assert cal["auc"] > 0.75 and cal["separable"]
    assert cal["dev"]["at_threshold"]["accuracy"] >= cal["dev"]["without_threshold"]["accuracy"]
    assert png.stat().st_size > 1000 and "calibration ->" in capsys.readouterr().out

    report_path = tmp_path / "report.json"
    assert main(["eval", "--dataset", "richpedia-mel", "--split", "test", *common, "--sample", "300",
                 "--nil-withhold", "0.1", "--set", f"nil.calibration={cal_path}", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    w = report["withheld"]
    assert w["fraction"] == 0.1 and w["mentions_drawn"] == 30 and w["mentions_nil"] >= 30
    assert report["counts"]["nil_expected"] == w["mentions_nil"]
    assert report["counts"]["kb_entities"] == 17805 - w["entities_hidden"]
    assert report["nil"]["threshold"]["source"] == str(cal_path)
    assert report["nil"]["threshold"]["threshold"] == cal["threshold"]
    assert report["nil"]["precision"] is not None and report["nil"]["recall"] is not None
    assert report["nil"]["true_positives"] > 0 and report["nil"]["score_auc"] > 0.75
    # the withheld mentions were never linked to their (hidden) gold
    nil_ok = report["accuracy"]["nil_expected_only"]
    assert nil_ok == report["nil"]["recall"]

    rc = main(["eval", "--dataset", "richpedia-mel", "--split", "test", *common, "--limit", "5",
               "--set", f"nil.calibration={cal_path}", "--set", "retrieval.top_k=7"])
    assert rc == 2
    assert "another configuration of method 'retrieval'" in capsys.readouterr().err


def test_two_runs_give_identical_answers(demo_index: Path, vllm_engine, text_encoder) -> None:
    """The demo's method (LLM selection) answers the demo mentions identically on a second run: same answers,
    candidates and scores (the demo's figure is reproducible)."""
    from mel.config import load_config
    from mel.mentions import read_mentions
    from mel.methods import build_linker

    cfg = load_config(REPO / "configs" / "demo.yaml", ["nil.calibration=off", "retrieval.top_k=5"])
    mentions = [m for m in read_mentions(REPO / "data" / "demo" / "mentions.jsonl") if not m.image]
    linker = build_linker(cfg, str(demo_index), engine=vllm_engine, text_encoder=text_encoder)

    def answers() -> list:
        return [(r.entity_id, [(c.entity_id, round(c.score, 5)) for c in r.candidates])
                for r in linker.link(mentions[:12])]

    first = answers()
    assert first == answers()
