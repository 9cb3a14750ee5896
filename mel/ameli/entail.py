"""Scorers of (premise, hypothesis) pairs for AMELI's text stream, behind one small interface.

- :class:`NLIModel`: a Hugging Face sequence-classification NLI checkpoint (``ameli.text.nli_model``: hub id or local
  folder; its ``id2label`` must name an ``entailment`` label, a ``contradiction`` label is used when present): scores
  are label probabilities;
- :class:`RelevanceProxy`: without an NLI model, the re-ranking cross-encoder (:mod:`mel.rerank`, by default the
  packaged ms-marco-MiniLM-L-12-v2 as ONNX) scores how relevant the hypothesis (query) is to the premise (passage);
  its scores are raw logits and it has no contradiction score;
- :class:`CachedEntailment`: wraps either with a bounded in-memory cache keyed by a hash of the pair's text, so
  evaluations and ablations score each pair once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mel.errors import ConfigError
from mel.rerank.base import check_pairs

if TYPE_CHECKING:
    import numpy as np

    from mel.config import AmeliTextConfig
    from mel.rerank.base import CrossEncoder


@runtime_checkable
class EntailmentScorer(Protocol):
    """Scores (premise, hypothesis) pairs: ``(entailment, contradiction)``, float32 arrays of shape (n,); higher
    entailment = the premise supports the hypothesis more; contradiction is None when the scorer has none."""

    @property
    def id(self) -> str: ...

    def entailment(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray | None]: ...


class RelevanceProxy:
    """The cross-encoder's relevance logit of the hypothesis (query) for the premise (passage)."""

    def __init__(self, encoder: CrossEncoder) -> None:
        self.encoder = encoder

    @property
    def id(self) -> str:
        return f"relevance:{self.encoder.id}"

    def entailment(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray | None]:
        import numpy as np

        check_pairs(pairs)
        if not pairs:
            return np.zeros(0, dtype=np.float32), None
        return np.asarray(self.encoder.score([(h, p) for p, h in pairs]), dtype=np.float32), None


def nli_labels(id2label: dict[Any, str], model: str) -> tuple[int, int | None]:
    """Indices of the entailment label and (when present) the contradiction label, case-insensitive prefixes."""
    entail = contra = None
    for idx, label in id2label.items():
        name = str(label).strip().lower()
        if name.startswith("entail") and entail is None:
            entail = int(idx)
        elif name.startswith("contradict") and contra is None:
            contra = int(idx)
    if entail is None:
        raise ConfigError(f"NLI model {model}: no 'entailment' label among its labels "
                          f"{sorted(str(v) for v in id2label.values())}; ameli.text.nli_model must be an NLI "
                          "sequence-classification checkpoint (e.g. cross-encoder/nli-deberta-v3-base)")
    return entail, contra


class NLIModel:
    """Entailment (and contradiction) probabilities from a transformers sequence-classification checkpoint."""

    def __init__(self, path: str, *, model_id: str | None = None, batch_size: int = 16, max_length: int = 256,
                 device: str = "cpu") -> None:
        from mel import compat

        compat.prepare()
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._id = model_id or path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        self.model.to(torch.device(device)).eval()
        self.device = device
        self.entail_label, self.contra_label = nli_labels(dict(self.model.config.id2label or {}), self._id)
        self.batch_size = batch_size
        self.max_length = max_length

    @property
    def id(self) -> str:
        return self._id

    def entailment(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray | None]:
        import numpy as np
        import torch

        check_pairs(pairs)
        ent: list[np.ndarray] = []
        con: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(pairs), self.batch_size):
                chunk = pairs[i:i + self.batch_size]
                enc = self.tokenizer([p for p, _ in chunk], [h for _, h in chunk], truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1).cpu().numpy()
                ent.append(probs[:, self.entail_label])
                if self.contra_label is not None:
                    con.append(probs[:, self.contra_label])
        e = np.concatenate(ent).astype(np.float32) if ent else np.zeros(0, dtype=np.float32)
        if self.contra_label is None:
            return e, None
        c = np.concatenate(con).astype(np.float32) if con else np.zeros(0, dtype=np.float32)
        return e, c


class CachedEntailment:
    """An :class:`EntailmentScorer` with a bounded LRU cache of pair scores (``size`` 0: no cache). Only the pairs
    not in the cache go to the wrapped scorer, in one call."""

    def __init__(self, inner: EntailmentScorer, size: int) -> None:
        self.inner = inner
        self.size = size
        self._cache: OrderedDict[bytes, tuple[float, float | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def id(self) -> str:
        return self.inner.id

    @staticmethod
    def key(premise: str, hypothesis: str) -> bytes:
        return hashlib.blake2b(f"{premise}\x00{hypothesis}".encode(), digest_size=16).digest()

    def entailment(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray | None]:
        import numpy as np

        check_pairs(pairs)
        keys = [self.key(p, h) for p, h in pairs]
        todo: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._cache and k not in todo:
                todo[k] = i
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        fresh: dict[bytes, tuple[float, float | None]] = {}
        if todo:
            e, c = self.inner.entailment([pairs[i] for i in todo.values()])
            if len(e) != len(todo) or (c is not None and len(c) != len(todo)):
                raise RuntimeError(f"entailment scorer {self.inner.id} returned {len(e)} scores for {len(todo)} "
                                   "pairs")
            for j, k in enumerate(todo):
                fresh[k] = (float(e[j]), None if c is None else float(c[j]))
        out = [fresh.get(k) or self._cache[k] for k in keys]
        if self.size:
            for k, v in fresh.items():
                self._cache[k] = v
            for k in keys:
                self._cache.move_to_end(k)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        ent = np.asarray([v[0] for v in out], dtype=np.float32)
        if any(v[1] is None for v in out):
            return ent, None
        return ent, np.asarray([v[1] for v in out], dtype=np.float32)


def build_entailment_scorer(cfg: AmeliTextConfig, *, cross_encoder: CrossEncoder | None = None,
                            cache_dir: str | None = None) -> CachedEntailment:
    """The configured scorer, cached: :class:`NLIModel` for ``cfg.nli_model``, else :class:`RelevanceProxy` over
    ``cross_encoder`` (required then)."""
    if cfg.nli_model is not None:
        from mel.models.sources import model_id, resolve_model

        path = resolve_model(cfg.nli_model, kind="rerank", cache_dir=cache_dir)
        inner: Any = NLIModel(path, model_id=model_id(cfg.nli_model, path), batch_size=cfg.batch_size,
                                           max_length=cfg.max_length, device=cfg.device)
        if cfg.aggregation == "entailment-minus-contradiction" and inner.contra_label is None:
            raise ConfigError(f"ameli.text.aggregation 'entailment-minus-contradiction': NLI model {inner.id} has "
                              "no 'contradiction' label")
    else:
        if cross_encoder is None:
            raise ConfigError("ameli.text.nli_model is None, so the text stream uses the re-ranking cross-encoder "
                              "(retrieval.rerank.model), but none was given")
        if cfg.aggregation == "entailment-minus-contradiction":
            raise ConfigError("ameli.text.aggregation 'entailment-minus-contradiction' needs an NLI model "
                              "(ameli.text.nli_model): the cross-encoder gives no contradiction score")
        inner = RelevanceProxy(cross_encoder)
    return CachedEntailment(inner, cfg.cache_size)
