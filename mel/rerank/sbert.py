"""Cross-encoder backed by sentence-transformers' ``CrossEncoder`` (torch; any device, any size of model).

Loads from a local folder only (hub ids are resolved to a local snapshot by :mod:`mel.models.sources`). Scores are
raw logits (the activation is set to identity), the same scale as :class:`~mel.rerank.onnx.OnnxCrossEncoder`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mel.errors import ConfigError
from mel.rerank.base import check_pairs

if TYPE_CHECKING:
    import numpy as np


class SentenceTransformersCrossEncoder:
    """Raw relevance logits for (query, passage) pairs from a sentence-transformers cross-encoder."""

    def __init__(self, model_path: str, *, model_id: str | None = None, batch_size: int = 32, max_length: int = 512,
                 device: str = "cpu") -> None:
        from mel import compat

        compat.prepare()
        import torch
        from sentence_transformers import CrossEncoder as STCrossEncoder

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._model: Any = STCrossEncoder(model_path, device=device, max_length=max_length, local_files_only=True,
                                          activation_fn=torch.nn.Identity())
        self._model.eval()
        labels = int(getattr(self._model, "num_labels", 1))
        if labels not in (1, 2):
            raise ConfigError(f"cross-encoder {model_path}: the model has {labels} labels; expected 1 (a relevance "
                              "score) or 2 (irrelevant/relevant)")
        self._labels = labels
        self._id = model_id or model_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    @property
    def id(self) -> str:
        return self._id

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import numpy as np

        check_pairs(pairs)
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        logits = self._model.predict([(q, p) for q, p in pairs], batch_size=self.batch_size,
                                     convert_to_numpy=True, show_progress_bar=False)
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim == 2:
            logits = logits[:, 0] if self._labels == 1 else logits[:, 1] - logits[:, 0]
        return np.ascontiguousarray(logits, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformersCrossEncoder(id={self._id!r}, device={self.device!r})"
