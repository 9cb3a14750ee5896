"""AMELI on real parts (MiniLM, faiss, the packaged ONNX cross-encoder as the text stream's scorer): the generated
AMELI-format family sample linked by `mel eval`, in process and through the Serve app (entail and attribute_filter
on the Retriever, fuse and NIL in the ingress), with the same answers; the attribute filter is what makes the
difference on this sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, serve_app

pytestmark = pytest.mark.integration

SETS = ["retrieval.rerank.enabled=true", "index.entity_template='{name}. {description}'"]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, text_encoder) -> tuple[Path, Path, Any]:  # noqa: ANN001
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.datasets.ameli_families import write_ameli_families
    from pipelines.index import run_index_local

    root = tmp_path_factory.mktemp("ameli")
    write_ameli_families(root)
    ds = load_dataset("ameli", root)
    paths = ds.write(root / "export")
    idx = run_index_local(paths["kb"], root / "index", load_config(None, SETS), encoder=text_encoder)
    return root, idx, ds


def test_eval_reports_the_filter_and_the_methods_differ(family, tmp_path: Path) -> None:  # noqa: ANN001
    from mel.entrypoints.cli import main

    root, idx, _ = family
    acc = {}
    for method in ("retrieval", "ameli", "ameli-no-filter"):
        report = tmp_path / f"{method}.json"
        assert main(["eval", "--dataset", "ameli", "--data-dir", str(root), "--index", str(idx), "--config",
                     "configs/ameli.yaml", "--set", f"method={method}", *sum((["--set", s] for s in SETS), []),
                     "--report", str(report)]) == 0
        rep = json.loads(report.read_text())
        acc[method] = rep["accuracy"]["all_mentions"]
        assert rep["counts"]["nil_expected"] == 2  # the NIL reviews are kept and counted
        assert ("filter" in rep) == (method == "ameli")
        if method == "ameli":
            assert rep["filter"]["gold_filtered"] == 0 and rep["filter"]["mentions_filtered"] >= 60
            assert set(rep["latency_ms"]) == {"retrieve", "rerank", "entail", "attribute_filter", "fuse"}
    assert acc["ameli"] >= acc["ameli-no-filter"] + 5 and acc["ameli"] >= acc["retrieval"] + 30, acc


def test_serve_answers_like_the_runner(family, ray_local, text_encoder) -> None:  # noqa: ANN001

    from mel.config import load_config
    from mel.runner import Runner

    _, idx, ds = family
    ms = ds.split("test")[:24]
    # one pair per ONNX call: the INT8 model's dynamic quantisation scales each batch, so only then do scores not
    # depend on how Serve batched the mentions
    one = ["retrieval.rerank.batch_size=1"]
    cfg = load_config("configs/ameli.yaml", [*SETS, *one])
    offline = Runner.load(cfg, str(idx), text_encoder=text_encoder).link(ms)
    port = free_port()
    scfg = load_config("configs/ameli.yaml", [*SETS, *one, f"serve.port={port}", "serve.app_name=ameli",
                                              "serve.route_prefix=/ameli"])
    with serve_app(scfg, idx) as url:
        assert httpx.get(f"{url}/healthz", timeout=30).json()["steps"] == [
            "retrieve", "rerank", "entail", "attribute_filter", "fuse", "nil"]
        body = {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context} for m in ms]}
        r = httpx.post(f"{url}/v1/link", json=body, timeout=300)
        assert r.status_code == 200, r.text
        online = r.json()["results"]
    assert [o["mention_id"] for o in online] == [e.mention_id for e in offline]
    for e, o in zip(offline, online, strict=True):
        assert o["entity_id"] == e.entity_id and o["method"] == "ameli"
        assert [c["entity_id"] for c in o["candidates"]] == [c.entity_id for c in e.candidates]
        assert [c["score"] for c in o["candidates"]] == pytest.approx([c.score for c in e.candidates], abs=1e-5)
        assert [bool(c["scores"].get("filtered")) for c in o["candidates"]] == [
            bool(c.scores.get("filtered")) for c in e.candidates]
