"""`mel index`: embed a KB and write an index artifact (layout: mel.index.build).

:func:`run_index` is the Ray Data job: entity rows -> encoder actor pool -> Parquet embedding shards ->
faiss on the driver -> manifest last, all inside :func:`mel.index.atomic.atomic_dir`, so a failed or
interrupted run leaves no directory a loader accepts and a rerun replaces the old index atomically.
Images (when the image encoder is enabled) go through a CPU decode/resize stage (tasks) before their own
encoder actor pool. The same code runs on a laptop (local Ray on 127.0.0.1) and on a cluster
(``cfg.ray.address``): embeddings stream back to the driver, which writes the shards, so no shared
filesystem is needed.

:func:`run_index_local` is the single-process equivalent (same files; used by tests and as the benchmark
baseline).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mel.config import Config, ImageEncoderConfig, TextEncoderConfig
from mel.errors import InputError
from mel.index.atomic import atomic_dir
from mel.index.build import IMAGE, SHARDS, TEXT, ShardWriter, assemble_index_dir, entity_texts, image_rows
from mel.kb.model import KB
from pipelines.common import dataset_from_table, decode_images, model_cache_dir, set_progress, start_ray, to_pil

if TYPE_CHECKING:
    from mel.encoders.base import ImageEncoder, TextEncoder

log = logging.getLogger("mel.index")


# ----------------------------------------------------------------------------- worker-side classes
class TextEmbedder:
    """Ray Data callable class: builds the text encoder once per actor, embeds a batch per call."""

    def __init__(self, text_cfg: dict[str, Any], cache_dir: str) -> None:
        from mel.compat import prepare

        prepare()
        from mel.encoders import build_text_encoder

        self.encoder = build_text_encoder(TextEncoderConfig.model_validate(text_cfg), cache_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vec = _check_vectors(self.encoder.encode(texts), len(texts), self.encoder.dim, self.encoder.id)
        return {"position": batch["position"], "entity_id": batch["entity_id"], "vector": vec,
                "encoder_id": np.full(len(texts), self.encoder.id, dtype=object)}


def decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data batch function (CPU tasks): decode + resize images to the encoder's input size."""
    images, ok = decode_images([str(p) for p in batch["image"]], size)
    return {"owner": batch["owner"], "entity_id": batch["entity_id"], "image": batch["image"],
            "pixels": images, "ok": ok}


class ImageEmbedder:
    """Ray Data callable class: builds the image encoder once per actor, embeds the decoded images."""

    def __init__(self, image_cfg: dict[str, Any], cache_dir: str) -> None:
        enc = _build_image_encoder(ImageEncoderConfig.model_validate(image_cfg), cache_dir)
        if enc is None:
            raise RuntimeError("models.image_encoder is disabled, but the index job asked for image vectors")
        self.encoder = enc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        vec = np.zeros((len(ok), self.encoder.dim), dtype=np.float32)
        if ok.any():
            pixels = batch["pixels"][ok]
            vec[ok] = _check_vectors(self.encoder.encode(to_pil(pixels)), int(ok.sum()), self.encoder.dim,
                                     self.encoder.id)
        return {"owner": batch["owner"], "entity_id": batch["entity_id"], "image": batch["image"], "ok": ok,
                "vector": vec, "encoder_id": np.full(len(ok), self.encoder.id, dtype=object)}


def _probe_image_encoder(image_cfg: dict[str, Any], cache_dir: str) -> tuple[str, int, int]:
    """(id, dim, image_size) of the configured image encoder (run where the encoder actors run)."""
    enc = _build_image_encoder(ImageEncoderConfig.model_validate(image_cfg), cache_dir)
    if enc is None:
        raise RuntimeError("models.image_encoder is disabled")
    return enc.id, enc.dim, enc.image_size


def _build_image_encoder(cfg: ImageEncoderConfig, cache_dir: str | None) -> ImageEncoder | None:
    """``build_image_encoder``, made reproducible across processes: without ``pretrained`` the weights are
    random, so the torch seed is fixed first (else every actor would embed with different weights)."""
    from mel.compat import prepare

    prepare()
    from mel.encoders import build_image_encoder

    if not (cfg.enabled and cfg.pretrained is None):
        return build_image_encoder(cfg, cache_dir)
    import torch

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(0)
        return build_image_encoder(cfg, cache_dir)


def _check_vectors(vec: np.ndarray, n: int, dim: int, encoder_id: str) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32)
    if vec.shape != (n, dim):
        raise RuntimeError(f"encoder {encoder_id!r} returned shape {vec.shape} for {n} inputs, expected ({n}, {dim})")
    if not np.isfinite(vec).all():
        raise RuntimeError(f"encoder {encoder_id!r} returned non-finite values")
    return vec


# ----------------------------------------------------------------------------- shared driver steps
def _read_kb(kb_path: str | Path) -> KB:
    from mel.kb.reader import read_kb

    kb = read_kb(kb_path)
    if len(kb) == 0:
        raise InputError("the KB holds no entities; nothing to index", path=str(kb_path))
    return kb


def _manifest_fields(cfg: Config, encoder_id: str) -> dict[str, Any]:
    return {"encoder_id": encoder_id, "config_hash": cfg.hash(), "factory": cfg.index.factory,
            "metric": cfg.index.metric, "entity_template": cfg.index.entity_template}


def _single_encoder(seen: set[str], what: str) -> str:
    if len(seen) != 1:
        raise RuntimeError(f"{what} vectors came from {len(seen)} different encoders: {sorted(seen)}")
    return next(iter(seen))


def _log_done(out: Path, kb: KB, n_images: int, missing: int, seconds: float, how: str) -> None:
    rate = len(kb) / max(seconds, 1e-9)
    extra = f", {n_images} image vectors ({missing} images unreadable)" if n_images or missing else ""
    log.info("index %s: %d entities%s in %.1fs (%.1f entities/s, %s)", out, len(kb), extra, seconds, rate, how)


# ----------------------------------------------------------------------------- Ray Data job
def run_index(kb_path: str | Path, out_dir: str | Path, cfg: Config, *, progress: bool = True) -> Path:
    """Build the index of the KB at ``kb_path`` into ``out_dir`` with Ray Data; returns ``out_dir``."""
    import pyarrow as pa
    import ray

    t0 = time.perf_counter()
    kb = _read_kb(kb_path)
    start_ray(cfg)
    set_progress(progress)
    p = cfg.pipelines.index
    pool = {"compute": ray.data.ActorPoolStrategy(size=p.workers), "batch_size": p.batch_size,
            "num_cpus": p.cpus_per_worker, "num_gpus": p.gpus_per_worker}
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        shards = tmp / SHARDS
        rows = pa.table({"position": pa.array(range(len(kb)), pa.int64()),
                         "entity_id": pa.array([e.id for e in kb.entities], pa.string()),
                         "text": pa.array(entity_texts(kb, cfg.index.entity_template), pa.string())})
        text_ds = dataset_from_table(rows, p.batch_size).map_batches(
            TextEmbedder, fn_constructor_args=(cfg.models.text_encoder.model_dump(mode="json"), model_cache_dir(cfg)),
            batch_format="numpy", **pool)
        writer: ShardWriter | None = None
        seen: set[str] = set()
        for batch in text_ds.iter_batches(batch_size=None, batch_format="numpy"):
            seen.update(str(x) for x in batch["encoder_id"])
            if writer is None:
                writer = ShardWriter(shards, TEXT, str(batch["encoder_id"][0]), p.shard_rows)
            writer.add({"entity_id": batch["entity_id"], "position": batch["position"], "vector": batch["vector"]})
        if writer is None or writer.rows != len(kb):
            raise RuntimeError(f"the embedding job returned {0 if writer is None else writer.rows} vectors for "
                               f"{len(kb)} entities")
        writer.close()
        encoder_id = _single_encoder(seen, "text")

        image_encoder_id, n_img, missing = None, 0, len(kb.report.missing_images)
        if cfg.models.image_encoder.enabled:
            image_encoder_id, n_img, bad = _ray_images(kb, cfg, shards, pool)
            missing += bad
        assemble_index_dir(tmp, kb, shards, _manifest_fields(cfg, encoder_id), image_encoder_id=image_encoder_id,
                           images_missing=missing)
    _log_done(out, kb, n_img, missing, time.perf_counter() - t0, f"Ray Data, {p.workers} workers")
    return out


def _ray_images(kb: KB, cfg: Config, shards: Path, pool: dict[str, Any]) -> tuple[str, int, int]:
    """Embed every entity image with Ray Data; returns (encoder id, vectors written, unreadable images)."""
    import pyarrow as pa
    import ray

    p = cfg.pipelines.index
    image_cfg = cfg.models.image_encoder.model_dump(mode="json")
    probe = ray.remote(_probe_image_encoder).options(num_cpus=p.cpus_per_worker, num_gpus=p.gpus_per_worker)
    encoder_id, dim, size = ray.get(probe.remote(image_cfg, model_cache_dir(cfg)))
    owners, ids, paths = image_rows(kb)
    writer = ShardWriter(shards, IMAGE, encoder_id, p.shard_rows)
    bad = 0
    if owners:
        batch_size = cfg.models.image_encoder.batch_size
        rows = pa.table({"owner": pa.array(owners, pa.int64()), "entity_id": pa.array(ids, pa.string()),
                         "image": pa.array(paths, pa.string())})
        ds = (dataset_from_table(rows, batch_size)
              .map_batches(decode_batch, fn_kwargs={"size": size}, batch_size=batch_size, batch_format="numpy",
                           num_cpus=1)
              .map_batches(ImageEmbedder, fn_constructor_args=(image_cfg, model_cache_dir(cfg)), batch_format="numpy",
                           **dict(pool, batch_size=batch_size)))
        seen: set[str] = set()
        total = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            seen.update(str(x) for x in batch["encoder_id"])
            ok = np.asarray(batch["ok"], dtype=bool)
            total += len(ok)
            bad += int((~ok).sum())
            writer.add({"owner": batch["owner"][ok], "entity_id": batch["entity_id"][ok],
                        "image": batch["image"][ok], "vector": np.asarray(batch["vector"])[ok].reshape(-1, dim)})
        if total != len(owners):
            raise RuntimeError(f"the image job returned {total} rows for {len(owners)} images")
        if seen and _single_encoder(seen, "image") != encoder_id:
            raise RuntimeError(f"image vectors came from {sorted(seen)}, the probe found {encoder_id!r}")
    writer.add({"owner": [], "entity_id": [], "image": [], "vector": np.zeros((0, dim), np.float32)})
    writer.close()
    return encoder_id, writer.rows, bad


# ----------------------------------------------------------------------------- single process
def run_index_local(kb_path: str | Path, out_dir: str | Path, cfg: Config, encoder: TextEncoder | None = None, *,
                    image_encoder: ImageEncoder | None = None) -> Path:
    """Build the same artifact as :func:`run_index` in this process, with a plain loop over batches."""
    t0 = time.perf_counter()
    kb = _read_kb(kb_path)
    p = cfg.pipelines.index
    if encoder is None:
        from mel.compat import prepare

        prepare()
        from mel.encoders import build_text_encoder

        encoder = build_text_encoder(cfg.models.text_encoder, model_cache_dir(cfg))
    if image_encoder is None and cfg.models.image_encoder.enabled:
        image_encoder = _build_image_encoder(cfg.models.image_encoder, model_cache_dir(cfg))
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        shards = tmp / SHARDS
        writer = ShardWriter(shards, TEXT, encoder.id, p.shard_rows)
        texts = entity_texts(kb, cfg.index.entity_template)
        for i in range(0, len(kb), p.batch_size):
            chunk = texts[i:i + p.batch_size]
            vec = _check_vectors(encoder.encode(chunk), len(chunk), encoder.dim, encoder.id)
            writer.add({"entity_id": [e.id for e in kb.entities[i:i + p.batch_size]],
                        "position": list(range(i, i + len(chunk))), "vector": vec})
        writer.close()
        image_encoder_id, n_img, missing = None, 0, len(kb.report.missing_images)
        if image_encoder is not None:
            image_encoder_id = image_encoder.id
            n_img, bad = _local_images(kb, image_encoder, cfg.models.image_encoder.batch_size, shards, p.shard_rows)
            missing += bad
        assemble_index_dir(tmp, kb, shards, _manifest_fields(cfg, encoder.id), image_encoder_id=image_encoder_id,
                           images_missing=missing)
    _log_done(out, kb, n_img, missing, time.perf_counter() - t0, "single process")
    return out


def _local_images(kb: KB, enc: ImageEncoder, batch_size: int, shards: Path, shard_rows: int) -> tuple[int, int]:
    owners, ids, paths = image_rows(kb)
    writer = ShardWriter(shards, IMAGE, enc.id, shard_rows)
    bad = 0
    for i in range(0, len(owners), batch_size):
        pixels, ok = decode_images(paths[i:i + batch_size], enc.image_size)
        bad += int((~ok).sum())
        if ok.any():
            vec = _check_vectors(enc.encode(to_pil(pixels[ok])), int(ok.sum()), enc.dim, enc.id)
            sl = slice(i, i + batch_size)
            writer.add({"owner": np.asarray(owners[sl])[ok], "entity_id": np.asarray(ids[sl], dtype=object)[ok],
                        "image": np.asarray(paths[sl], dtype=object)[ok], "vector": vec})
    writer.add({"owner": [], "entity_id": [], "image": [], "vector": np.zeros((0, enc.dim), np.float32)})
    writer.close()
    return writer.rows, bad
