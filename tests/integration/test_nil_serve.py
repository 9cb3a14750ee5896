"""`mel serve` answers NIL with the threshold `mel calibrate` chose for the method and index it serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def test_serve_answers_nil_under_the_calibrated_threshold(ray_local, demo_index: Path, text_encoder,
                                                          tmp_path: Path) -> None:
    from ray import serve

    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.methods import build_linker
    from mel.types import Mention

    index = tmp_path / "index"
    shutil.copytree(demo_index, index)  # the session's demo index stays uncalibrated for other tests
    cfg = load_config(None, {"method": "retrieval", "serve.port": free_port(), "serve.app_name": "mel-nil",
                             "serve.route_prefix": "/nil", "nil.threshold": None})
    cal, path = commands.calibrate(cfg, dataset="demo", split="test", index_dir=str(index),
                                   data_dir=str(REPO / "data"), fraction=0.3, seed=0)
    assert path == index / "calibration" / "retrieval.json"
    # measured: threshold 0.44, AUC 0.84 (30 demo mentions, 8 golds withheld + 3 NIL mentions)
    assert cal.threshold is not None and 0.3 < cal.threshold < 0.6 and cal.separable

    unknown = Mention("x", "Zyxwv Qorlak", "Zyxwv Qorlak is a fictional glorb from the planet Vrenn.")
    known = Mention("y", "jaguar", "In the Pantanal a jaguar stalked a caiman along the riverbank.")
    local = build_linker(cfg, str(index), text_encoder=text_encoder)
    assert local.nil["source"] == str(path)
    expect = {r.mention_id: r for r in local.link([unknown, known])}
    assert expect["x"].entity_id is None and expect["x"].score < cal.threshold  # measured 0.26
    assert expect["y"].entity_id == "demo:jaguar-animal"

    url = commands.start_serve(cfg, str(index))
    try:
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["nil"]["source"] == str(path) and health["nil"]["threshold"] == cal.threshold
        body = {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context} for m in (unknown, known)]}
        r = httpx.post(f"{url}/v1/link", json=body, timeout=120)
        assert r.status_code == 200, r.text
        got = {x["mention_id"]: x for x in r.json()["results"]}
        assert got["x"]["entity_id"] is None and got["y"]["entity_id"] == "demo:jaguar-animal"
        assert got["x"]["score"] == pytest.approx(expect["x"].score, abs=1e-4)
    finally:
        serve.delete("mel-nil")
