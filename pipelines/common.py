"""Helpers shared by the Ray Data jobs: starting Ray, progress display, splitting inputs into blocks,
decoding images, and rate logging."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from mel.config import Config

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data
    from PIL import Image

log = logging.getLogger("mel.pipelines")

# Inputs are split into at most this many blocks, and into blocks of one batch when there are fewer.
MAX_BLOCKS = 1024


def start_ray(cfg: Config) -> None:
    """Start a loopback-only local Ray, or connect to ``cfg.ray.address`` (idempotent)."""
    from mel.raylocal import init_ray

    init_ray(cfg.ray)


def set_progress(enabled: bool) -> None:
    """Show (or hide) Ray Data progress bars for jobs started by this driver."""
    from ray.data import DataContext

    from mel.raylocal import quiet_ray_loggers

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = enabled
    ctx.enable_operator_progress_bars = enabled
    quiet_ray_loggers()  # Ray Data set its loggers up when imported: quiet them again under a quiet local Ray


def model_cache_dir(cfg: Config) -> str:
    return cfg.models.cache_path()


def dataset_from_table(table: pa.Table, batch_size: int) -> ray.data.Dataset:
    """A Ray Dataset over ``table`` in blocks of about one batch (so the actor pool gets work in parallel)."""
    import ray.data

    n = table.num_rows
    rows = max(batch_size, -(-n // MAX_BLOCKS))
    return ray.data.from_arrow([table.slice(i, rows) for i in range(0, max(n, 1), rows)])


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode an image to RGB, resize its shorter side to ``size`` (bicubic) and centre-crop to
    ``size`` x ``size``: uint8 array (size, size, 3). The same geometry CLIP-style preprocessing applies,
    so the encoder's own resize/crop is then a no-op. Raises OSError/ValueError for unreadable files."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


def to_pil(arrays: np.ndarray | list[np.ndarray]) -> list[Image.Image]:
    from PIL import Image

    return [Image.fromarray(np.asarray(a, dtype=np.uint8), "RGB") for a in arrays]


def decode_images(paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch: (images (n, size, size, 3) uint8, ok (n,) bool). Unreadable images are flagged, not
    dropped, so the caller counts and reports them."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, size)
            ok[i] = True
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing/corrupt files
            log.warning("cannot read image %s: %s", p, e)
    return out, ok


@contextmanager
def timed(what: str, logger: logging.Logger | None = None) -> Iterator[dict[str, float]]:
    """Measure a block; the dict gets ``seconds`` when it ends."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        (logger or log).debug("%s took %.2fs", what, out["seconds"])
