"""Deterministic, dependency-light encoders for UNIT TESTS ONLY (numpy + PIL; no torch, no model files).

``HashingTextEncoder`` embeds a bag of hashed lowercase words and character trigrams, so strings sharing words
or spellings get similar vectors. ``FakeImageEncoder`` embeds a small grey thumbnail through a fixed random
projection, so similar images get similar vectors. Both return L2-normalised float32 rows.
"""

from __future__ import annotations

import re
import zlib
from typing import TYPE_CHECKING

from mel.encoders.text import check_texts
from mel.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

_WORD = re.compile(r"\w+", re.UNICODE)


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    h = zlib.crc32(feature.encode("utf-8"))
    return h % dim, (1.0 if (h >> 31) & 1 == 0 else -1.0)


class HashingTextEncoder:
    """Feature hashing of words (weight 1) and character trigrams of each word (weight 0.5)."""

    def __init__(self, dim: int = 64, *, model_id: str | None = None) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self._dim = dim
        self._id = model_id or f"fake:hashing-{dim}"

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[tuple[str, float]]:
        feats: list[tuple[str, float]] = []
        for word in _WORD.findall(text.lower()):
            feats.append(("w:" + word, 1.0))
            padded = f"#{word}#"
            feats.extend(("c:" + padded[i:i + 3], 0.5) for i in range(len(padded) - 2))
        return feats or [("<empty>", 1.0)]

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        check_texts(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in self._features(text):
                idx, sign = _bucket(feature, self._dim)
                out[row, idx] += sign * weight
            norm = float(np.linalg.norm(out[row]))
            if norm == 0.0:  # features cancelled out exactly: fall back to a fixed direction
                out[row, _bucket("<empty>", self._dim)[0]] = 1.0
            else:
                out[row] /= norm
        return out


class FakeImageEncoder:
    """Grey ``thumb x thumb`` thumbnail (mean-centred) times a fixed random projection, normalised."""

    def __init__(self, dim: int = 32, *, image_size: int = 32, thumb: int = 8, seed: int = 0,
                 model_id: str | None = None) -> None:
        import numpy as np

        if dim < 2 or thumb < 2:
            raise ValueError("dim and thumb must be >= 2")
        self._dim = dim
        self._image_size = image_size
        self._thumb = thumb
        rng = np.random.default_rng(seed)
        self._proj = rng.standard_normal((thumb * thumb + 3, dim)).astype(np.float32)
        self._id = model_id or f"fake:image-{dim}"

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._image_size

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import numpy as np
        from PIL import Image

        if isinstance(images, Image.Image):
            raise InputError("encode() takes a list of images, got a single image")
        out = np.zeros((len(images), self._dim), dtype=np.float32)
        for row, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InputError(f"image {row} is {type(im).__name__}, expected PIL.Image.Image")
            rgb = np.asarray(im.convert("RGB").resize((self._thumb, self._thumb)), dtype=np.float32) / 255.0
            grey = rgb.mean(axis=2).ravel()
            feats = np.concatenate([grey - grey.mean(), rgb.reshape(-1, 3).mean(axis=0)])
            v = feats @ self._proj
            norm = float(np.linalg.norm(v))
            out[row] = v / norm if norm > 0 else np.eye(self._dim, dtype=np.float32)[0]
        return out
