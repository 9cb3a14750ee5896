"""`mel index`: embed a KB and write an index artifact (layout: mel.index.build).

Three entry points share one driver (:func:`build_index`) and differ only in what embeds:

- :func:`run_index`, the Ray Data job: entity rows -> encoder actor pool -> embeddings streamed back to the
  driver, which writes the shards (no shared filesystem needed). Images (when the image encoder is enabled) go
  through a CPU decode/resize stage (tasks) before their own encoder actor pool. The same code runs on a laptop
  (local Ray on 127.0.0.1) and on a cluster (``cfg.ray.address``).
- :func:`run_index_local`, the single-process equivalent (same files; tests, small KBs, benchmark baseline).
- :func:`run_update`, an incremental update (``mel index --update``): a KB delta applied to an existing
  index; vectors of unchanged entities come from that index (mel.index.update), only the rest is embedded,
  on Ray or locally.

Resumable: embedding shards are content-addressed and kept in a staging directory beside the output
(mel.index.staging) until the build succeeds, so a rerun after a failure or interruption embeds only the
ranges that were not written yet, and never reuses a shard made by another encoder or for other KB content.
The index directory itself is assembled inside :func:`mel.atomic.atomic_dir` (manifest last): a failed
run leaves no directory a loader accepts, and a rerun replaces an old index atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mel.atomic import atomic_dir
from mel.config import Config, ImageEncoderConfig, TextEncoderConfig
from mel.errors import InputError
from mel.index.build import IMAGE, SHARDS, TEXT, assemble_index_dir, entity_texts, image_rows
from mel.index.staging import (
    COLUMNS,
    ShardStore,
    ShardWriter,
    check_single_encoder,
    count_unreadable,
    image_fingerprints,
    image_stamp,
    link_files,
    plan_ranges,
    staging_dir_for,
    staging_lock,
    text_fingerprints,
)
from mel.kb.model import KB
from pipelines.common import dataset_from_table, decode_images, model_cache_dir, set_progress, start_ray, to_pil

if TYPE_CHECKING:
    from mel.encoders.base import ImageEncoder, TextEncoder
    from mel.index.update import ParentIndex

log = logging.getLogger("mel.index")

Sink = Callable[[Mapping[str, Any]], None]


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
    """Ray Data batch function (CPU tasks): decode + resize images to the encoder's input size (the other
    columns pass through)."""
    images, ok = decode_images([str(p) for p in batch["image"]], size)
    return {**batch, "pixels": images, "ok": ok}


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
        rest = {k: v for k, v in batch.items() if k not in ("pixels", "ok")}
        return {**rest, "ok": ok, "vector": vec, "encoder_id": np.full(len(ok), self.encoder.id, dtype=object)}


def _probe_text_encoder(text_cfg: dict[str, Any], cache_dir: str) -> tuple[str, int]:
    """(id, dim) of the configured text encoder (run where the encoder actors run)."""
    from mel.compat import prepare

    prepare()
    from mel.encoders import build_text_encoder

    enc = build_text_encoder(TextEncoderConfig.model_validate(text_cfg), cache_dir)
    return enc.id, enc.dim


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


# ----------------------------------------------------------------------------- embedders
class Embedder(Protocol):
    """What embeds for :func:`build_index`: the single-process loop or the Ray Data job.

    ``embed_text`` gets columns position, entity_id, text; ``embed_images`` gets row, owner, entity_id, image,
    stamp. Both hand every row back to ``sink`` with its ``vector`` (images also ``ok``), in any order.
    """

    how: str

    def text_encoder(self) -> tuple[str, int]: ...

    def image_encoder(self) -> tuple[str, int, int] | None: ...

    def embed_text(self, rows: dict[str, list[Any]], sink: Sink) -> None: ...

    def embed_images(self, rows: dict[str, list[Any]], sink: Sink) -> None: ...


class LocalEmbedder:
    """Embeds in this process with a plain loop over batches (encoders given, or built from the config)."""

    how = "single process"

    def __init__(self, cfg: Config, encoder: TextEncoder | None = None,
                 image_encoder: ImageEncoder | None = None) -> None:
        if encoder is None:
            from mel.compat import prepare

            prepare()
            from mel.encoders import build_text_encoder

            encoder = build_text_encoder(cfg.models.text_encoder, model_cache_dir(cfg))
        if image_encoder is None and cfg.models.image_encoder.enabled:
            image_encoder = _build_image_encoder(cfg.models.image_encoder, model_cache_dir(cfg))
        self.encoder, self.image = encoder, image_encoder
        self.batch_size, self.image_batch_size = cfg.pipelines.index.batch_size, cfg.models.image_encoder.batch_size

    def text_encoder(self) -> tuple[str, int]:
        return self.encoder.id, self.encoder.dim

    def image_encoder(self) -> tuple[str, int, int] | None:
        return None if self.image is None else (self.image.id, self.image.dim, self.image.image_size)

    def embed_text(self, rows: dict[str, list[Any]], sink: Sink) -> None:
        enc, bs = self.encoder, self.batch_size
        for i in range(0, len(rows["text"]), bs):
            texts = rows["text"][i:i + bs]
            vec = _check_vectors(enc.encode(texts), len(texts), enc.dim, enc.id)
            sink({"position": rows["position"][i:i + bs], "entity_id": rows["entity_id"][i:i + bs], "vector": vec})

    def embed_images(self, rows: dict[str, list[Any]], sink: Sink) -> None:
        enc, bs = self.image, self.image_batch_size
        assert enc is not None
        for i in range(0, len(rows["image"]), bs):
            pixels, ok = decode_images(rows["image"][i:i + bs], enc.image_size)
            vec = np.zeros((len(ok), enc.dim), dtype=np.float32)
            if ok.any():
                vec[ok] = _check_vectors(enc.encode(to_pil(pixels[ok])), int(ok.sum()), enc.dim, enc.id)
            sink({**{k: v[i:i + bs] for k, v in rows.items()}, "ok": ok, "vector": vec})


class RayEmbedder:
    """Embeds with Ray Data: encoder actor pools (and CPU decode tasks for images); results stream back to
    the driver. Starts (or connects to) Ray."""

    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        import ray

        start_ray(cfg)
        set_progress(progress)
        self.cfg, self.p, self.cache = cfg, cfg.pipelines.index, model_cache_dir(cfg)
        self.pool = {"compute": ray.data.ActorPoolStrategy(size=self.p.workers), "batch_size": self.p.batch_size,
                     "num_cpus": self.p.cpus_per_worker, "num_gpus": self.p.gpus_per_worker}
        self.how = f"Ray Data, {self.p.workers} workers"
        self._text: tuple[str, int] | None = None
        self._image: tuple[str, int, int] | None = None

    def _probe(self, fn: Callable[..., Any], model_cfg: dict[str, Any]) -> Any:
        import ray

        task = ray.remote(fn).options(num_cpus=self.p.cpus_per_worker, num_gpus=self.p.gpus_per_worker)
        return tuple(ray.get(task.remote(model_cfg, self.cache)))

    def text_encoder(self) -> tuple[str, int]:
        if self._text is None:
            self._text = self._probe(_probe_text_encoder, self.cfg.models.text_encoder.model_dump(mode="json"))
        return self._text

    def image_encoder(self) -> tuple[str, int, int] | None:
        if not self.cfg.models.image_encoder.enabled:
            return None
        if self._image is None:
            self._image = self._probe(_probe_image_encoder, self.cfg.models.image_encoder.model_dump(mode="json"))
        return self._image

    def embed_text(self, rows: dict[str, list[Any]], sink: Sink) -> None:
        import pyarrow as pa

        table = pa.table({"position": pa.array(rows["position"], pa.int64()),
                          "entity_id": pa.array(rows["entity_id"], pa.string()),
                          "text": pa.array(rows["text"], pa.string())})
        ds = dataset_from_table(table, self.p.batch_size).map_batches(
            TextEmbedder, fn_constructor_args=(self.cfg.models.text_encoder.model_dump(mode="json"), self.cache),
            batch_format="numpy", **self.pool)
        expected = self.text_encoder()[0]
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            check_single_encoder((str(x) for x in batch["encoder_id"]), expected, "text")
            sink({"position": batch["position"], "entity_id": batch["entity_id"], "vector": batch["vector"]})

    def embed_images(self, rows: dict[str, list[Any]], sink: Sink) -> None:
        import pyarrow as pa

        probed = self.image_encoder()
        assert probed is not None
        expected, dim, size = probed
        image_cfg = self.cfg.models.image_encoder.model_dump(mode="json")
        batch_size = self.cfg.models.image_encoder.batch_size
        table = pa.table({"row": pa.array(rows["row"], pa.int64()), "owner": pa.array(rows["owner"], pa.int64()),
                          "entity_id": pa.array(rows["entity_id"], pa.string()),
                          "image": pa.array(rows["image"], pa.string()), "stamp": pa.array(rows["stamp"], pa.string())})
        ds = (dataset_from_table(table, batch_size)
              .map_batches(decode_batch, fn_kwargs={"size": size}, batch_size=batch_size, batch_format="numpy",
                           num_cpus=1)
              .map_batches(ImageEmbedder, fn_constructor_args=(image_cfg, self.cache), batch_format="numpy",
                           **dict(self.pool, batch_size=batch_size)))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            check_single_encoder((str(x) for x in batch["encoder_id"]), expected, "image")
            sink({**{k: batch[k] for k in COLUMNS[IMAGE]}, "vector": np.asarray(batch["vector"]).reshape(-1, dim)})


# ----------------------------------------------------------------------------- shared driver
def _read_kb(kb_path: str | Path | KB) -> KB:
    from mel.kb.reader import read_kb

    kb = kb_path if isinstance(kb_path, KB) else read_kb(kb_path)
    if len(kb) == 0:
        where = (kb.report.source or None) if isinstance(kb_path, KB) else str(kb_path)
        raise InputError("the KB holds no entities; nothing to index", path=where)
    return kb


def _manifest_fields(cfg: Config, encoder_id: str) -> dict[str, Any]:
    return {"encoder_id": encoder_id, "config_hash": cfg.hash(), "factory": cfg.index.factory,
            "metric": cfg.index.metric, "entity_template": cfg.index.entity_template}


def _join_summaries(cfg: Config, kb: KB) -> tuple[dict[str, str] | None, dict[str, Any] | None]:
    """Entity summaries (``index.summaries``, `mel index --summaries DIR`) joined to ``kb`` for {summary} of the
    entity template: (entity id -> current summary, the manifest's record of them), or (None, None)."""
    if cfg.index.summaries is None:
        return None, None
    from mel.augment.base import template_fields
    from mel.augment.entity import load_summaries
    from mel.errors import ConfigError

    if "summary" not in template_fields(cfg.index.entity_template):
        raise ConfigError(f"entity summaries {cfg.index.summaries} are given, but index.entity_template "
                          f"{cfg.index.entity_template!r} has no {{summary}} field to put them in")
    loaded = load_summaries(cfg.index.summaries)
    joined = loaded.join(kb)
    if joined.fallback:
        log.warning("entity summaries %s: %d of %d entities have none (%d missing, %d stale: their input changed); "
                    "they get their description (else attributes text) in {summary} (rerun `mel augment entities` "
                    "to add them)",
                    loaded.path, joined.fallback, len(kb), joined.missing, joined.stale)
    return joined.summaries, loaded.record(joined)


@dataclass
class FillStats:
    """Where the rows of one shard kind came from in this run."""

    resumed: int = 0
    """Rows in complete shards left by an earlier attempt."""
    from_parent: int = 0
    """Rows whose vector came from the parent index (updates)."""
    embedded: int = 0
    """Rows the encoder embedded in this run."""

    @property
    def reused(self) -> int:
        return self.resumed + self.from_parent


Prior = Callable[[int], tuple[np.ndarray, dict[str, Any]] | None]
"""Row number -> (vector, extra columns) known without embedding, or None."""


def fill_shards(store: ShardStore, rows: dict[str, list[Any]], embed: Callable[[dict[str, list[Any]], Sink], None],
                *, resume: bool = True, prior: Prior | None = None) -> FillStats:
    """Make every shard of ``store`` complete: reuse the ones already staged, take the vectors ``prior`` knows
    (row number -> (vector, extra columns) or None), and embed only the remaining rows."""
    done = {r.index for r in store.scan(resume=resume)}
    missing = [r for r in store.ranges if r.index not in done]
    stats = FillStats(resumed=sum(r.rows for r in store.ranges if r.index in done))
    writer = ShardWriter(store, missing)
    todo: list[int] = []
    for r in missing:
        hits: list[tuple[int, np.ndarray, dict[str, Any]]] = []
        for i in range(r.start, r.stop):
            hit = prior(i) if prior is not None else None
            if hit is None:
                todo.append(i)
            else:
                hits.append((i, hit[0], hit[1]))
        if hits:
            cols: dict[str, Any] = {k: [v[i] for i, _, _ in hits] for k, v in rows.items()}
            cols.update({k: [extra[k] for _, _, extra in hits] for k in hits[0][2]})
            cols["vector"] = np.stack([vec for _, vec, _ in hits])
            writer.add(cols)
            stats.from_parent += len(hits)
    if done:
        log.info("resuming: %d of %d %s shards (%d rows) reused from %s", len(done), len(store.ranges), store.kind,
                 stats.resumed, store.dir)
    if todo:
        embed({k: [v[i] for i in todo] for k, v in rows.items()}, writer.add)
        stats.embedded = len(todo)
    writer.close()
    return stats


def build_index(kb: KB, out_dir: str | Path, cfg: Config, embedder: Embedder, *, parent: ParentIndex | None = None,
                version: int = 1, lineage: Mapping[str, Any] | None = None, counts: Mapping[str, int] | None = None,
                assemble_options: Mapping[str, Any] | None = None) -> Path:
    """Embed ``kb`` (resumably, see mel.index.staging) and write the index directory ``out_dir`` atomically.

    ``parent`` given (an update): its vectors are reused wherever the embedded input is unchanged, and its
    encoders must be the configured ones. ``version``/``lineage``/``counts`` go into the manifest;
    ``assemble_options`` are extra keyword arguments of :func:`mel.index.build.assemble_index_dir`.
    """
    t0 = time.perf_counter()
    if len(kb) == 0:
        raise InputError("the KB holds no entities; nothing to index", path=kb.report.source or None)
    p = cfg.pipelines.index
    template = cfg.index.entity_template
    out = Path(out_dir)
    text_id, dim = embedder.text_encoder()
    image = embedder.image_encoder()
    if parent is not None:
        parent.check_encoders(encoder_id=text_id, dim=dim, entity_template=template,
                              image_encoder_id=image[0] if image else None)
    summaries, summaries_record = _join_summaries(cfg, kb)
    staging = staging_dir_for(out, p.staging_dir)
    with staging_lock(staging):
        ids, texts = kb.ids, entity_texts(kb, template, summaries)
        ranges = plan_ranges(TEXT, text_fingerprints(ids, texts), p.shard_rows, encoder_id=text_id, dim=dim,
                             salt=template)
        stores = [ShardStore(staging, TEXT, ranges, text_id, dim)]
        text_prior: Prior | None = None
        if parent is not None:
            def text_prior(i: int) -> tuple[np.ndarray, dict[str, Any]] | None:
                v = parent.text_vector(ids[i], texts[i])
                return None if v is None else (v, {})

        ts = fill_shards(stores[0], {"position": list(range(len(kb))), "entity_id": ids, "text": texts},
                         embedder.embed_text, resume=p.resume, prior=text_prior)
        all_counts = {"embedded_vectors": ts.embedded, "reused_vectors": ts.reused, "resumed_vectors": ts.resumed}
        image_id, unreadable = None, 0
        if image is not None:
            image_id, image_dim, _ = image
            owners, iids, paths = image_rows(kb)
            stamps = [image_stamp(x) for x in paths]
            ranges = plan_ranges(IMAGE, image_fingerprints(owners, iids, paths, stamps), p.shard_rows,
                                 encoder_id=image_id, dim=image_dim)
            stores.append(ShardStore(staging, IMAGE, ranges, image_id, image_dim))
            image_prior: Prior | None = None
            if parent is not None:
                def image_prior(i: int) -> tuple[np.ndarray, dict[str, Any]] | None:
                    hit = parent.image_vector(iids[i], paths[i], stamps[i])
                    return None if hit is None else (hit[0], {"ok": hit[1]})

            st = fill_shards(stores[1], {"row": list(range(len(owners))), "owner": owners, "entity_id": iids,
                                         "image": paths, "stamp": stamps}, embedder.embed_images, resume=p.resume,
                             prior=image_prior)
            all_counts.update(embedded_images=st.embedded, reused_images=st.reused)
            unreadable = count_unreadable(stores[1].files())
        all_counts.update(counts or {})
        with atomic_dir(out) as tmp:
            link_files([f for s in stores for f in s.files()], tmp / SHARDS)
            fields = {**_manifest_fields(cfg, text_id), "summaries": summaries_record}
            assemble_index_dir(tmp, kb, tmp / SHARDS, fields, image_encoder_id=image_id,
                               images_missing=len(kb.report.missing_images) + unreadable, counts=all_counts,
                               version=version, parent=lineage, summaries=summaries,
                               **{"index_cfg": cfg.index, **(assemble_options or {})})
        from mel.index.update import publish

        publish(out)
        if p.keep_staging:
            log.info("staging shards kept in %s", staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    _log_done(out, kb, all_counts, image_id is not None, time.perf_counter() - t0, embedder.how)
    return out


def _log_done(out: Path, kb: KB, counts: Mapping[str, int], images: bool, seconds: float, how: str) -> None:
    rate = len(kb) / max(seconds, 1e-9)
    extra = (f", images: {counts['embedded_images']} embedded, {counts['reused_images']} reused" if images else "")
    log.info("index %s: %d entities (%d texts embedded, %d reused%s) in %.1fs (%.1f entities/s, %s)", out, len(kb),
             counts["embedded_vectors"], counts["reused_vectors"], extra, seconds, rate, how)


# ----------------------------------------------------------------------------- entry points
def run_index(kb_path: str | Path | KB, out_dir: str | Path, cfg: Config, *, progress: bool = True) -> Path:
    """Build the index of the KB at ``kb_path`` into ``out_dir`` with Ray Data; returns ``out_dir``."""
    kb = _read_kb(kb_path)
    # --- faiss at scale: text shards are added to the trained index in parallel Ray tasks (pipelines/faiss_build)
    from pipelines.faiss_build import RayParallelAdd

    parallel = {"parallel_add": RayParallelAdd.from_config(cfg)}
    # --- end faiss at scale
    return build_index(kb, out_dir, cfg, RayEmbedder(cfg, progress=progress), assemble_options=parallel)


def run_index_local(kb_path: str | Path | KB, out_dir: str | Path, cfg: Config, encoder: TextEncoder | None = None, *,
                    image_encoder: ImageEncoder | None = None) -> Path:
    """Build the same artifact as :func:`run_index` in this process, with a plain loop over batches."""
    kb = _read_kb(kb_path)
    return build_index(kb, out_dir, cfg, LocalEmbedder(cfg, encoder, image_encoder))


def run_update(delta_path: str | Path, base_dir: str | Path, out_dir: str | Path | None, cfg: Config, *,
               local: bool = False, encoder: TextEncoder | None = None, image_encoder: ImageEncoder | None = None,
               progress: bool = True) -> Path:
    """Apply the KB delta at ``delta_path`` to the index at ``base_dir`` (an index directory or a versioned
    root) and write the new version to ``out_dir`` (None: the next ``vNNNN`` / ``<name>-vNNNN`` beside it).

    Only new or changed entity texts (and new or changed images) are embedded, on Ray unless ``local`` (or an
    ``encoder`` is given). The old directory is left untouched; returns the new one.
    """
    from mel.index.update import ParentIndex, default_update_out
    from mel.kb.delta import apply_delta, read_delta

    parent = ParentIndex(base_dir)
    delta = read_delta(delta_path)
    result = apply_delta(parent.kb(), delta)
    if len(result.kb) == 0:
        raise InputError("the delta deletes every entity; an index needs at least one", path=str(delta_path))
    version, lineage = parent.lineage(delta.source)
    out = Path(out_dir) if out_dir is not None else default_update_out(parent.dir, version)
    if out.absolute() == parent.dir.absolute():
        raise InputError("the output must differ from the index being updated (it keeps serving until the switch)",
                         path=str(out))
    log.info("update %s -> %s: %d added, %d changed, %d removed", parent.dir, out, len(result.added),
             len(result.changed), len(result.removed))
    embedder: Embedder = (LocalEmbedder(cfg, encoder, image_encoder) if local or encoder is not None
                          else RayEmbedder(cfg, progress=progress))
    return build_index(result.kb, out, cfg, embedder, parent=parent, version=version, lineage=lineage,
                       counts=result.counts())
