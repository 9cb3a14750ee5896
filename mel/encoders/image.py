"""Image encoder backed by open_clip.

The model argument may be:

- an open_clip architecture name (``"ViT-B-32"``) with ``pretrained`` a tag (``"laion2b_s34b_b79k"``, needs the
  weights in the local cache when offline) or a checkpoint file path; ``pretrained=None`` gives random weights;
- ``"hf-hub:org/repo"`` (config and weights from the Hugging Face cache/hub);
- a local directory holding ``open_clip_config.json`` and weights (open_clip's ``local-dir:`` layout);
- a path to a model config JSON (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``), registered with
  open_clip under the file's stem; ``pretrained`` may then be a checkpoint path (tests use random weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mel.errors import ConfigError, InputError, ModelNotFound

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


def _register_config_json(path: Path) -> str:
    """Register a model config JSON with open_clip; return the architecture name to create."""
    import open_clip

    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON model config: {e}") from e
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "embed_dim" not in cfg:
        raise ConfigError(f"{path}: an open_clip model config needs 'embed_dim' and 'vision_cfg' (and 'text_cfg')")
    name = path.stem
    existing = open_clip.get_model_config(name)
    if existing is not None and existing != cfg:
        raise ConfigError(f"{path}: open_clip already knows a different model config named {name!r}; rename the file")
    if existing is None:
        open_clip.add_model_config(path)
    return name


def model_source(model: str) -> tuple[str, str]:
    """Classify ``model``: ('config', path) | ('local-dir', path) | ('hf-hub', id) | ('name', arch)."""
    if model.startswith("hf-hub:"):
        return "hf-hub", model
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".json":
        if p.name == "open_clip_config.json":
            return "local-dir", str(p.parent.resolve())
        return "config", str(p.resolve())
    if p.is_dir():
        if not (p / "open_clip_config.json").is_file():
            raise ModelNotFound(f"{p}: an open_clip model directory needs an open_clip_config.json")
        return "local-dir", str(p.resolve())
    if model.endswith((".json", ".pt", ".bin", ".safetensors")) or model.startswith(("/", ".", "~")):
        raise ModelNotFound(f"image model {model!r}: no such file or directory")
    return "name", model


class OpenClipImageEncoder:
    """L2-normalised float32 image embeddings from an open_clip vision tower."""

    def __init__(self, model_name_or_config_path: str, pretrained: str | None = None, device: str = "cpu",
                 batch_size: int = 32, *, model_id: str | None = None) -> None:
        from mel import compat

        compat.prepare()
        import open_clip
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        kind, ref = model_source(model_name_or_config_path)
        if kind == "config":
            name = _register_config_json(Path(ref))
        elif kind == "local-dir":
            name = f"local-dir:{ref}"
        else:
            name = ref
        if kind == "name" and name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip architecture {name!r}; give a known name (e.g. ViT-B-32), "
                              "'hf-hub:org/repo', a local model directory or a model config JSON path")
        if pretrained is not None and kind in ("hf-hub", "local-dir"):
            raise ConfigError(f"image encoder: 'pretrained' must be unset for {kind} models (weights come with "
                              f"{model_name_or_config_path!r})")
        if pretrained is not None and Path(pretrained).expanduser().is_file():
            pretrained = str(Path(pretrained).expanduser().resolve())
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, pretrained_text=False)
        except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
            raise ModelNotFound(
                f"open_clip model {model_name_or_config_path!r} (pretrained={pretrained!r}) could not be loaded: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; when offline, give a checkpoint path as "
                "'pretrained', a local model directory, or set HF_HUB_OFFLINE=0 where a network exists") from e
        model.eval()
        self._model: Any = model
        self._preprocess: Any = preprocess
        self._torch_device = torch.device(device)
        size = getattr(model.visual, "image_size", 224)
        self._image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            probe = model.encode_image(torch.zeros(1, 3, self._image_size, self._image_size, device=self._torch_device))
        self._dim = int(probe.shape[-1])
        self._id = model_id or (f"open_clip:{model_name_or_config_path}" + (f"@{pretrained}" if pretrained else ""))
        self.batch_size = batch_size
        self.device = device

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._image_size

    def preprocess_pil(self, image: Image.Image) -> torch.Tensor:
        """The model's own eval transform: RGB, resize, centre-crop, normalise -> (3, H, W) float tensor."""
        return self._preprocess(image.convert("RGB") if image.mode != "RGB" else image)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import numpy as np
        import torch
        from PIL import Image

        if isinstance(images, Image.Image):
            raise InputError("encode() takes a list of images, got a single image")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InputError(f"image {i} is {type(im).__name__}, expected PIL.Image.Image")
        if not images:
            return np.zeros((0, self._dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack([self.preprocess_pil(im) for im in images[start:start + self.batch_size]])
                feats = self._model.encode_image(batch.to(self._torch_device), normalize=True)
                out.append(feats.float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def __repr__(self) -> str:
        return f"OpenClipImageEncoder(id={self._id!r}, dim={self._dim}, image_size={self._image_size})"
