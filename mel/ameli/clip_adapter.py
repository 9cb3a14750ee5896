"""AMELI's image stream adapter: a small residual MLP on (frozen) CLIP image embeddings,
``y = normalize(alpha * MLP(x) + (1 - alpha) * x)`` with ``MLP: d -> d/4 -> d`` (ReLU), as in CLIP-Adapter.

Trained contrastively by :mod:`mel.train.clip_adapter` on (review image, gold product image) embedding pairs. A saved
adapter is a folder with ``adapter.pt`` (the state dict) and ``mel_clip_adapter.json`` recording how it was made:
the image encoder id and embedding dimension it was trained on, alpha, hidden size, steps, losses, the SHA-256 of
``adapter.pt``, creation time. :func:`load_clip_adapter` refuses an adapter made for another image encoder or
dimension, or whose weights file does not match its record.

:class:`IdentityAdapter` is the image stream without an adapter (plain CLIP cosine). torch is imported only when an
adapter module is built or loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mel.errors import ArtifactMismatch, InputError
from mel.models.gguf import file_sha256

if TYPE_CHECKING:
    import numpy as np

ADAPTER_WEIGHTS = "adapter.pt"
ADAPTER_META = "mel_clip_adapter.json"
FORMAT = "mel-clip-adapter"
FORMAT_VERSION = 1
RETRAIN_HINT = ("train one for it with `mel train adapter` (or unset ameli.image.adapter_path to use plain CLIP "
                "similarity)")


@runtime_checkable
class EmbeddingAdapter(Protocol):
    """Maps L2-normalised image embeddings (n, d) to L2-normalised embeddings (n, d)."""

    @property
    def image_encoder_id(self) -> str | None:
        """The image encoder the adapter was trained on (None: any, e.g. the identity)."""
        ...

    def transform(self, x: np.ndarray) -> np.ndarray: ...


class IdentityAdapter:
    """No adapter: the embeddings as they are (re-normalised), i.e. plain CLIP cosine in the image stream."""

    image_encoder_id: str | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        import numpy as np

        x = np.asarray(x, dtype=np.float32)
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.maximum(norms, 1e-12)


def hidden_dim(dim: int) -> int:
    """The MLP's bottleneck: d/4 (at least 1)."""
    return max(1, dim // 4)


@lru_cache(maxsize=1)
def _module_class() -> type:
    import torch

    class ResidualAdapter(torch.nn.Module):
        """``normalize(alpha * MLP(x) + (1 - alpha) * x)``, MLP ``d -> d/4 -> d`` with ReLU."""

        def __init__(self, dim: int, alpha: float) -> None:
            super().__init__()
            self.dim, self.alpha, self.hidden = int(dim), float(alpha), hidden_dim(int(dim))
            self.mlp = torch.nn.Sequential(torch.nn.Linear(self.dim, self.hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(self.hidden, self.dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mixed = self.alpha * self.mlp(x) + (1.0 - self.alpha) * x
            return torch.nn.functional.normalize(mixed, dim=-1)

    return ResidualAdapter


def adapter_module(dim: int, alpha: float) -> Any:
    """A new (randomly initialised, torch's current seed) residual adapter ``torch.nn.Module``."""
    if dim < 1:
        raise InputError(f"adapter dim must be >= 1, got {dim}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"adapter alpha must lie in [0, 1], got {alpha}")
    return _module_class()(dim, alpha)


def trainable_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ClipAdapter:
    """A residual adapter module with the record it was saved with; numpy in, numpy out."""

    def __init__(self, module: Any, meta: dict[str, Any]) -> None:
        self.module = module.eval()
        self.meta = meta

    @property
    def image_encoder_id(self) -> str | None:
        return self.meta.get("image_encoder_id")

    @property
    def dim(self) -> int:
        return int(self.module.dim)

    @property
    def alpha(self) -> float:
        return float(self.module.alpha)

    def transform(self, x: np.ndarray) -> np.ndarray:
        import numpy as np
        import torch

        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InputError(f"adapter expects embeddings of shape (n, {self.dim}), got {arr.shape}")
        if len(arr) == 0:
            return arr
        with torch.no_grad():
            return self.module(torch.from_numpy(arr)).numpy().astype(np.float32)


def save_clip_adapter(module: Any, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``adapter.pt`` + ``mel_clip_adapter.json`` into a temp folder beside ``out_dir``, then rename it onto
    ``out_dir`` (an existing folder is replaced whole): nothing half-written is ever loadable."""
    import torch

    from mel.atomic import publish_dir

    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp / ADAPTER_WEIGHTS)
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "dim": int(module.dim),
                  "hidden": int(module.hidden), "alpha": float(module.alpha),
                  "weights_sha256": file_sha256(tmp / ADAPTER_WEIGHTS),
                  "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / ADAPTER_META).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    root = Path(path)
    meta_path = root / ADAPTER_META
    if not root.is_dir():
        raise InputError("CLIP adapter folder not found" if not root.exists() else "CLIP adapter must be a folder "
                         f"holding {ADAPTER_WEIGHTS} and {ADAPTER_META}", path=str(root))
    if not meta_path.is_file():
        raise ArtifactMismatch(f"{root}: no {ADAPTER_META}; not a CLIP adapter folder written by `mel train adapter`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactMismatch(f"{meta_path}: unreadable adapter record ({e}); retrain the adapter") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactMismatch(f"{meta_path}: not a {FORMAT} record")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactMismatch(f"{meta_path}: format_version {meta.get('format_version')!r}, this mel reads "
                               f"{FORMAT_VERSION}; retrain the adapter")
    for key, kind in (("image_encoder_id", str), ("dim", int), ("hidden", int), ("alpha", (int, float))):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ArtifactMismatch(f"{meta_path}: field {key!r} is missing or malformed")
    return meta


def load_clip_adapter(path: str | Path, *, expect_image_encoder_id: str | None = None,
                      expect_dim: int | None = None) -> ClipAdapter:
    """Load an adapter folder. ``expect_*`` (None: not checked) refuse an adapter trained on another image encoder or
    embedding dimension (:class:`ArtifactMismatch` naming both and what to rebuild)."""
    meta = read_adapter_meta(path)
    root = Path(path)
    if expect_image_encoder_id is not None and meta["image_encoder_id"] != expect_image_encoder_id:
        raise ArtifactMismatch(f"CLIP adapter {root} was trained on image encoder {meta['image_encoder_id']!r}, "
                               f"but the image encoder in use is {expect_image_encoder_id!r}; {RETRAIN_HINT}")
    if expect_dim is not None and meta["dim"] != expect_dim:
        raise ArtifactMismatch(f"CLIP adapter {root} works on {meta['dim']}-dimensional embeddings, but the image "
                               f"encoder in use gives {expect_dim}; {RETRAIN_HINT}")
    weights = root / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ArtifactMismatch(f"CLIP adapter {root}: {ADAPTER_WEIGHTS} is missing; {RETRAIN_HINT}")
    if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
        raise ArtifactMismatch(f"CLIP adapter {root}: {ADAPTER_WEIGHTS} does not match the SHA-256 its record holds "
                               f"(damaged or replaced); {RETRAIN_HINT}")
    import torch

    module = adapter_module(meta["dim"], float(meta["alpha"]))
    if module.hidden != meta["hidden"]:
        raise ArtifactMismatch(f"CLIP adapter {root}: hidden size {meta['hidden']} differs from this mel's "
                               f"{module.hidden} for dim {meta['dim']}; {RETRAIN_HINT}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as e:
        raise ArtifactMismatch(f"CLIP adapter {root}: cannot load {ADAPTER_WEIGHTS}: {str(e).splitlines()[0]}; "
                               f"{RETRAIN_HINT}") from None
    return ClipAdapter(module, meta)
