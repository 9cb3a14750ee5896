"""Cross-encoders for re-ranking: the interface in ``base``, onnxruntime in ``onnx``, sentence-transformers in
``sbert``, a unit-test double in ``tests/doubles``.

Build one from config with :func:`build_cross_encoder`. Importing this package is light: onnxruntime / torch load
when a cross-encoder is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mel.rerank.base import CrossEncoder

if TYPE_CHECKING:
    from mel.config import RerankConfig

__all__ = ["CrossEncoder", "build_cross_encoder"]


def build_cross_encoder(cfg: RerankConfig, cache_dir: str | None = None) -> CrossEncoder:
    """The cross-encoder ``cfg.model`` names, run by ``cfg.backend`` ('auto': ONNX when the model folder holds
    ``model.onnx`` + ``tokenizer.json``, else sentence-transformers). Built whether or not ``cfg.enabled``."""
    from mel.errors import ConfigError
    from mel.models.sources import model_id, resolve_model
    from mel.rerank.onnx import find_onnx_model

    path = resolve_model(cfg.model, kind="rerank", cache_dir=cache_dir)
    ident = model_id(cfg.model, path)
    backend = cfg.backend
    if backend == "auto":
        backend = "onnx" if find_onnx_model(path) is not None else "sentence-transformers"
    if backend == "onnx":
        from mel.rerank.onnx import OnnxCrossEncoder

        return OnnxCrossEncoder(path, model_id=ident, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                device=cfg.device, threads=cfg.threads)
    if backend == "sentence-transformers":
        from mel.rerank.sbert import SentenceTransformersCrossEncoder

        return SentenceTransformersCrossEncoder(path, model_id=ident, batch_size=cfg.batch_size,
                                                max_length=cfg.max_length, device=cfg.device)
    raise ConfigError(f"retrieval.rerank.backend {cfg.backend!r}: expected 'auto', 'onnx' or 'sentence-transformers'")
