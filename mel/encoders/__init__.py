"""Encoders: interfaces in ``base``, real ones in ``text``/``image``, unit-test doubles in ``tests/doubles``.

Build them from config with :func:`build_text_encoder` / :func:`build_image_encoder`. Importing this package
is light: torch and the model libraries load when an encoder is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.encoders.base import ImageEncoder, TextEncoder

if TYPE_CHECKING:
    from mel.config import ImageEncoderConfig, TextEncoderConfig

__all__ = ["ImageEncoder", "TextEncoder", "build_image_encoder", "build_text_encoder"]


def build_text_encoder(cfg: TextEncoderConfig, cache_dir: str | None = None) -> TextEncoder:
    """A :class:`~mel.encoders.text.SentenceTransformerEncoder` for ``cfg.model`` (package, local path or hub id)."""
    from mel.encoders.text import SentenceTransformerEncoder
    from mel.models.sources import model_id, resolve_model

    path = resolve_model(cfg.model, kind="text", cache_dir=cache_dir)
    return SentenceTransformerEncoder(path, model_id=model_id(cfg.model, path), device=cfg.device,
                                      batch_size=cfg.batch_size, max_seq_length=cfg.max_seq_length)


def build_image_encoder(cfg: ImageEncoderConfig, cache_dir: str | None = None) -> ImageEncoder | None:
    """An :class:`~mel.encoders.image.OpenClipImageEncoder`, or ``None`` when ``cfg.enabled`` is false."""
    if not cfg.enabled:
        return None
    from mel.encoders.image import OpenClipImageEncoder
    from mel.models.sources import PACKAGE_PREFIX, model_id, resolve_model

    model = cfg.model
    if model.startswith(PACKAGE_PREFIX):
        model = resolve_model(model, kind="image", cache_dir=cache_dir)
    pretrained = cfg.pretrained
    if pretrained is not None and pretrained.startswith(PACKAGE_PREFIX):
        pretrained = resolve_model(pretrained, kind="image", cache_dir=cache_dir)
    ident = "open_clip:" + model_id(cfg.model) + (f"@{model_id(cfg.pretrained)}" if cfg.pretrained else "")
    return OpenClipImageEncoder(model, pretrained=pretrained, device=cfg.device, batch_size=cfg.batch_size,
                                model_id=ident)
