"""`mel train adapter` with real parts: the tiny random open_clip model embeds the AMELI-format sample's review and
product images; the residual adapter trains a few steps, checkpoints, resumes exactly, is saved with its record,
reloads with the same outputs and is refused for another image encoder. Real CLIP checkpoints load through the same
code (``models.image_encoder``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.ameli_sample import write_ameli_sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ameli-data")
    write_ameli_sample(root)
    return root


@pytest.fixture(scope="module")
def trained(sample: Path, image_encoder, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    from mel.datasets import load_dataset
    from mel.train.clip_adapter import collect_image_pairs, embed_pairs, frozen_parameter_count, train_adapter

    ds = load_dataset("ameli", sample)
    raw = collect_image_pairs(ds, "train")
    assert len(raw) == 7  # six training reviews, one with two photos
    pairs = embed_pairs(raw, image_encoder)
    out = tmp_path_factory.mktemp("adapter") / "ad"
    kw = {"alpha": 0.5, "temperature": 0.1, "batch_size": 4, "lr": 5e-3, "seed": 0, "checkpoint_every": 2,
          "frozen_params": frozen_parameter_count(image_encoder)}
    first = train_adapter(pairs, out, steps=3, **kw)
    return pairs, out, kw, first


def test_adapter_trains_checkpoints_and_resumes(trained, tmp_path: Path) -> None:  # noqa: ANN001
    from mel.train.clip_adapter import checkpoint_path, train_adapter

    pairs, out, kw, first = trained
    assert first["steps"] == 3 and len(first["losses"]) == 3 and all(math.isfinite(x) for x in first["losses"])
    assert first["trainable_params"] == 32 * 8 + 8 + 8 * 32 + 32 and first["frozen_params"] > 0
    assert 0 < first["trainable_share"] < 1
    meta = json.loads((out / "mel_clip_adapter.json").read_text())
    assert meta["image_encoder_id"] == pairs.image_encoder_id and meta["dim"] == 32 and meta["alpha"] == 0.5
    assert meta["steps"] == 3 and meta["losses"] == first["losses"] and meta["created"]
    assert (out / "adapter.pt").is_file() and checkpoint_path(out).is_file()
    with pytest.raises(Exception, match="already exists"):
        train_adapter(pairs, out, steps=3, **kw)
    resumed_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(out, resumed_dir)
    shutil.copy(checkpoint_path(out), checkpoint_path(resumed_dir))
    resumed = train_adapter(pairs, resumed_dir, steps=5, resume=True, **kw)
    assert resumed["steps"] == 5 and resumed["resumed_from_step"] == 3
    assert resumed["losses"][:3] == first["losses"]
    straight = train_adapter(pairs, tmp_path / "straight", steps=5, **kw)  # same batches, same result
    np.testing.assert_allclose(resumed["losses"], straight["losses"], rtol=1e-5)
    with pytest.raises(Exception, match="other pairs or settings.*temperature"):
        train_adapter(pairs, resumed_dir, steps=6, resume=True, **{**kw, "temperature": 0.2})


def test_adapter_roundtrip_and_refusal(trained, image_encoder) -> None:  # noqa: ANN001
    import torch

    from mel.ameli.clip_adapter import load_clip_adapter
    from mel.errors import ArtifactMismatch

    pairs, out, _, _ = trained
    adapter = load_clip_adapter(out, expect_image_encoder_id=image_encoder.id, expect_dim=image_encoder.dim)
    y = adapter.transform(pairs.mention[:3])
    assert y.shape == (3, 32) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    state = torch.load(out / "adapter.pt", weights_only=True)
    x = torch.from_numpy(pairs.mention[:3])
    mlp = torch.relu(x @ state["mlp.0.weight"].T + state["mlp.0.bias"]) @ state["mlp.2.weight"].T + state["mlp.2.bias"]
    want = torch.nn.functional.normalize(0.5 * mlp + 0.5 * x, dim=-1).numpy()
    np.testing.assert_allclose(y, want, atol=1e-5)
    with pytest.raises(ArtifactMismatch, match="trained on image encoder"):
        load_clip_adapter(out, expect_image_encoder_id="open_clip:ViT-B-32@openai")
    with pytest.raises(ArtifactMismatch, match="dimensional"):
        load_clip_adapter(out, expect_dim=512)



def test_train_adapter_command(sample: Path, tmp_path: Path, tiny_clip_config: str, image_encoder,  # noqa: ANN001
                               capsys) -> None:  # noqa: ANN001
    """The command on a CLIP checkpoint file (the tiny model's weights saved as open_clip loads real ones), so each
    run embeds the same images the same way and --resume continues."""
    import torch

    from mel.entrypoints.cli import main

    ckpt = tmp_path / "tiny-clip.pt"
    torch.save(image_encoder._model.state_dict(), ckpt)
    out = tmp_path / "cli-adapter"
    sets = ["--set", "models.image_encoder.enabled=true", "--set", f"models.image_encoder.model={tiny_clip_config}",
            "--set", f"models.image_encoder.pretrained={ckpt}", "--set", "train.adapter.batch_size=4",
            "--set", "train.adapter.checkpoint_every=1"]
    argv = ["train", "adapter", "--dataset", "ameli", "--data-dir", str(sample), "--out", str(out), *sets]
    assert main([*argv, "--steps", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["steps"] == 2 and first["pairs"] == 7 and 0 < first["trainable_share_pct"] < 100
    assert first["use_with"] == f"--set ameli.image.adapter_path={out.resolve()}"
    assert main([*argv, "--steps", "3", "--resume"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["steps"] == 3 and again["resumed_from_step"] == 2
    assert main(["train", "adapter", "--dataset", "ameli", "--data-dir", str(sample), "--out",
                 str(tmp_path / "x")]) == 2
    assert "set models.image_encoder.enabled=true" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_serve_runs_the_image_stream_on_a_scorer_deployment(sample: Path, ray_local, text_encoder,  # noqa: ANN001
                                                            image_encoder, tiny_clip_config: str,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    """The AMELI-format sample with images linked through the Serve app: image features on the Retriever, an adapter
    trained for the encoder on the Scorer deployment, fusion in the ingress; the same answers as in process. The
    encoder loads a checkpoint file (the tiny model's weights), so every replica embeds alike."""
    import httpx
    import torch

    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.encoders import build_image_encoder
    from mel.runner import Runner
    from mel.train.clip_adapter import collect_image_pairs, embed_pairs, train_adapter
    from pipelines.index import run_index_local
    from tests.conftest import free_port, serve_app

    ckpt = tmp_path / "tiny-clip.pt"
    torch.save(image_encoder._model.state_dict(), ckpt)
    ds = load_dataset("ameli", sample)
    sets = {"method": "ameli", "models.image_encoder.enabled": True, "models.image_encoder.model": tiny_clip_config,
            "models.image_encoder.pretrained": str(ckpt), "ameli.fusion.lam": 0.5, "retrieval.top_k": 6,
            "ameli.text.candidates": 4}
    enc = build_image_encoder(load_config(None, sets).models.image_encoder)
    assert enc is not None
    adapter = train_adapter(embed_pairs(collect_image_pairs(ds, "train"), enc), tmp_path / "adapter", alpha=0.5,
                            temperature=0.1, steps=3, batch_size=4)["path"]
    sets["ameli.image.adapter_path"] = adapter
    cfg = load_config(None, sets)
    idx = run_index_local(ds.kb, tmp_path / "index", cfg, text_encoder, image_encoder=enc)
    ms = ds.split("test")
    runner = Runner.load(cfg, str(idx), text_encoder=text_encoder, image_encoder=enc)
    assert "image_stream" in runner.step_names
    offline = runner.link(ms)
    assert any("image_stream" in c.scores for r in offline for c in r.candidates)
    port = free_port()
    scfg = load_config(None, {**sets, "serve.port": port, "serve.app_name": "ameli-img",
                              "serve.route_prefix": "/ameli-img", "serve.image_root": str(sample)})
    with serve_app(scfg, idx) as url:
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["deployments"] == ["Retriever", "Scorer"]
        assert health["steps"] == ["retrieve", "image_features", "entail", "attribute_filter", "image_stream", "fuse",
                                   "nil"]
        body = {"mentions": [{"id": m.id, "surface": m.surface, "context": m.context, "image_path": m.image}
                              for m in ms]}
        r = httpx.post(f"{url}/v1/link", json=body, timeout=300)
        assert r.status_code == 200, r.text
        online = r.json()["results"]
    for e, o in zip(offline, online, strict=True):
        assert o["entity_id"] == e.entity_id
        assert [c["entity_id"] for c in o["candidates"]] == [c.entity_id for c in e.candidates]
        for co, ce in zip(o["candidates"], e.candidates, strict=True):
            assert co["scores"].get("image_stream") == pytest.approx(ce.scores.get("image_stream"), abs=1e-5)
