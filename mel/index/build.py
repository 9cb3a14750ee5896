"""Building the files of an index artifact: entity table, embedding shards, faiss indexes, manifest.

Both builders (the Ray Data job and the single-process loop in ``pipelines/index.py``) write embedding
shards with :class:`ShardWriter` and finish with :func:`assemble_index_dir`, so they produce the same
artifact. Layout of an index directory::

    manifest.json      written last (see mel.index.manifest)
    entities.parquet   row = position: position, id, name, aliases, description, attributes (JSON), images, text
    text.faiss         the text index, ids = positions (IVF: its own ids; else IndexIDMap2); or, with
                       index.search_shards > 1, text-NNNNN.faiss each over a position range (mel.index.faiss_ops);
                       text*.ivfdata: inverted lists of an on-disk IVF
    text.npy           float32 (n, d) entity text vectors, row = position
    image.faiss        (optional) one vector per entity image; ids = image rows (always a Flat index)
    image.npy          (optional) float32 (m, d_img)
    image_owner.npy    (optional) int64 (m,): entity position owning each image row
    shards/            text-*.parquet (entity_id, position, vector), image-*.parquet (row, owner, entity_id,
                       image, stamp, ok, vector): the content-addressed shards of mel.index.staging
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mel.errors import ArtifactMismatch, ConfigError, InputError
from mel.index.manifest import MANIFEST, Manifest, write_manifest
from mel.index.staging import ENCODER_KEY, IMAGE, TEXT
from mel.index.staging import ShardWriter as ShardWriter  # re-export: shards are written there
from mel.kb.model import KB
from mel.text import entity_text

if TYPE_CHECKING:
    import faiss
    import pyarrow as pa

    from mel.config import IndexConfig
    from mel.index.faiss_ops import ParallelAdd
    from mel.index.faiss_plan import FaissPlan

log = logging.getLogger(__name__)

ENTITIES = "entities.parquet"
TEXT_INDEX, TEXT_VECTORS = "text.faiss", "text.npy"
IMAGE_INDEX, IMAGE_VECTORS, IMAGE_OWNER = "image.faiss", "image.npy", "image_owner.npy"
SHARDS = "shards"
MANIFEST_FIELDS = ("encoder_id", "config_hash", "factory", "metric", "entity_template")


# ----------------------------------------------------------------------------- entity table
def entity_texts(kb: KB, template: str, summaries: Mapping[str, str] | None = None) -> list[str]:
    """The text embedded for each entity, in KB order (row = position). ``summaries`` (entity id -> LLM summary,
    see mel.augment.entity) fill the template's {summary}; an entity without one gets its description."""
    summaries = summaries or {}
    return [entity_text(e, template, summaries.get(e.id)) for e in kb.entities]


def entity_table(kb: KB, template: str, summaries: Mapping[str, str] | None = None) -> pa.Table:
    import pyarrow as pa

    if len(kb) == 0:
        raise InputError("the KB has no entities; nothing to index", path=kb.report.source or None)
    ents = kb.entities
    return pa.table({
        "position": pa.array(range(len(ents)), pa.int64()),
        "id": pa.array([e.id for e in ents], pa.string()),
        "name": pa.array([e.name for e in ents], pa.string()),
        "aliases": pa.array([list(e.aliases) for e in ents], pa.list_(pa.string())),
        "description": pa.array([e.description for e in ents], pa.string()),
        # attribute order is kept: it is part of the embedded text (an update re-renders it from this table)
        "attributes": pa.array([json.dumps(e.attributes, ensure_ascii=False) for e in ents],
                               pa.string()),
        "images": pa.array([list(e.images) for e in ents], pa.list_(pa.string())),
        "text": pa.array(entity_texts(kb, template, summaries), pa.string()),
    })


def image_rows(kb: KB) -> tuple[list[int], list[str], list[str]]:
    """(owner position, entity id, image path) for every image of every entity, in KB order."""
    owners, ids, paths = [], [], []
    for pos, e in enumerate(kb.entities):
        for img in e.images:
            owners.append(pos)
            ids.append(e.id)
            paths.append(img)
    return owners, ids, paths


# ----------------------------------------------------------------------------- shards
# Shards are written by mel.index.staging.ShardWriter (fixed, content-addressed position ranges).
def read_shards(shards_dir: str | Path, kind: str, *, encoder_id: str | None = None,
                allow_empty: bool = False) -> pa.Table | None:
    """Concatenate the ``kind`` shards of a directory (in file-name order); refuse shards made by another
    encoder. No shard files: InputError, or ``None`` with ``allow_empty``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(shards_dir).glob(f"{kind}-*.parquet"))
    if not files:
        if allow_empty:
            return None
        raise InputError(f"no {kind} embedding shards ({kind}-*.parquet)", path=str(shards_dir))
    tables = []
    for f in files:
        t = pq.read_table(f)
        got = (t.schema.metadata or {}).get(ENCODER_KEY, b"").decode()
        if encoder_id is not None and got != encoder_id:
            raise ArtifactMismatch(f"{f}: shard made by encoder {got!r}, expected {encoder_id!r}")
        tables.append(t.replace_schema_metadata(None))
    return pa.concat_tables(tables)


def shard_vectors(table: pa.Table) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def text_vectors_from_shards(shards_dir: str | Path, kb: KB, encoder_id: str) -> np.ndarray:
    """(n, d) vectors with row = KB position; every entity exactly once, ids matching the KB."""
    t = read_shards(shards_dir, TEXT, encoder_id=encoder_id)
    assert t is not None
    pos = t.column("position").to_numpy()
    n = len(kb)
    counts = np.bincount(pos[(pos >= 0) & (pos < n)], minlength=n)
    if len(pos) != n or (counts != 1).any() or ((pos < 0) | (pos >= n)).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        dup = np.flatnonzero(counts > 1)[:5].tolist()
        raise ArtifactMismatch(f"{shards_dir}: text shards hold {len(pos)} rows for {n} entities "
                               f"(missing positions {missing}, duplicated {dup})")
    order = np.argsort(pos, kind="stable")
    ids = t.column("entity_id").to_pylist()
    for position, row in enumerate(order):
        if ids[row] != kb.entities[position].id:
            raise ArtifactMismatch(f"{shards_dir}: shard row for position {position} has entity id {ids[row]!r}, "
                                   f"the KB has {kb.entities[position].id!r}")
    return shard_vectors(t)[order]


def image_vectors_from_shards(shards_dir: str | Path, n_entities: int, encoder_id: str,
                              dim: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors (m, d), owner positions (m,), image paths) of the readable images (``ok``), sorted by (owner,
    path). No image shards (a KB without images): empty arrays, of dim ``dim`` when given."""
    t = read_shards(shards_dir, IMAGE, encoder_id=encoder_id, allow_empty=True)
    if t is None:
        return np.zeros((0, dim or 0), np.float32), np.zeros(0, np.int64), []
    if "ok" in t.column_names:
        t = t.filter(t.column("ok"))
    owner = t.column("owner").to_numpy().astype(np.int64)
    if len(owner) and (owner.min() < 0 or owner.max() >= n_entities):
        raise ArtifactMismatch(f"{shards_dir}: image shard owner outside 0..{n_entities - 1}")
    paths = t.column("image").to_pylist()
    order = np.lexsort((np.array(paths, dtype=object).astype(str), owner)) if len(owner) else np.zeros(0, np.int64)
    return shard_vectors(t)[order], owner[order], [paths[i] for i in order]


# ----------------------------------------------------------------------------- faiss
# Planning (factory 'auto', parameters) lives in mel.index.faiss_plan, building and merging in mel.index.faiss_ops.
def build_faiss(vectors: np.ndarray, ids: np.ndarray, factory: str, metric: str, *, plan: FaissPlan | None = None,
                use_gpu: bool = False) -> faiss.Index:
    """One in-memory index over ``vectors`` with the given ids: trained on a seeded sample when the layout needs
    it, then every vector added. ``factory`` may be 'auto' (see :func:`~mel.index.faiss_plan.choose_factory`,
    default knobs); ``plan`` overrides both. IVF layouts keep their own ids; others are wrapped in
    ``IndexIDMap2``."""
    from mel.config import IndexConfig
    from mel.index.faiss_ops import add_vectors, new_index, train_index, training_sample
    from mel.index.faiss_plan import choose_factory

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"build_faiss needs a non-empty 2-D array, got shape {vectors.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(vectors),):
        raise ValueError(f"build_faiss: {len(vectors)} vectors but ids of shape {ids.shape}")
    if metric not in ("ip", "l2"):
        raise ConfigError(f"index.metric must be 'ip' or 'l2', got {metric!r}")
    if plan is None:
        plan = choose_factory(len(vectors), vectors.shape[1], IndexConfig(factory=factory, metric=metric))
    index, _ = train_index(new_index(plan), training_sample(vectors, plan), plan, use_gpu=use_gpu)
    add_vectors(index, vectors, ids)
    return index


def set_nprobe(index: faiss.Index, nprobe: int, ef_search: int | None = None) -> None:
    """Set ``nprobe`` on the IVF index inside ``index`` (and efSearch >= nprobe on an HNSW coarse quantizer);
    no-op for non-IVF indexes."""
    from mel.index.faiss_ops import set_search_params

    set_search_params(index, nprobe=nprobe, ef_search=ef_search)


# ----------------------------------------------------------------------------- assembly
def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def file_sizes(index_dir: str | Path) -> dict[str, int]:
    root = Path(index_dir)
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def assemble_index_dir(out_dir: str | Path, kb: KB, shards_dir: str | Path, manifest_fields: Mapping[str, Any], *,
                       image_encoder_id: str | None = None, images_missing: int = 0,
                       counts: Mapping[str, int] | None = None, version: int = 1,
                       parent: Mapping[str, Any] | None = None, index_cfg: IndexConfig | None = None,
                       parallel_add: ParallelAdd | None = None,
                       summaries: Mapping[str, str] | None = None) -> Manifest:
    """Turn embedding shards into a complete index directory; the manifest is written last.

    ``manifest_fields`` must hold encoder_id, config_hash, factory, metric, entity_template.
    ``image_encoder_id`` given: image shards are read too. ``shards_dir`` is moved to ``out_dir/shards``
    when it lies elsewhere. ``out_dir`` should be the temp dir of :func:`mel.atomic.atomic_dir`.
    ``counts`` adds to the manifest counts (e.g. embedded_vectors, reused_vectors); ``version`` and
    ``parent`` record the lineage (1 and None for a full build; see mel.index.update).
    ``index_cfg`` holds the knobs of factory 'auto', search shards, on-disk merge and GPU use (defaults when
    None); ``parallel_add`` (e.g. pipelines.faiss_build.RayParallelAdd) adds the text shards in parallel.
    The manifest records the resolved factory string and ``index_params``. ``summaries`` (entity id -> summary)
    fill {summary} in the entity table's texts, as they did in the embedded ones; ``manifest_fields["summaries"]``
    (optional) is the manifest's record of them.
    """
    import faiss
    import pyarrow.parquet as pq

    missing = [k for k in MANIFEST_FIELDS if k not in manifest_fields]
    if missing:
        raise ValueError(f"assemble_index_dir: manifest_fields lacks {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = Path(shards_dir)
    if shards.resolve() != (out / SHARDS).resolve():
        shutil.move(str(shards), str(out / SHARDS))
        shards = out / SHARDS
    encoder_id = str(manifest_fields["encoder_id"])
    factory, metric = str(manifest_fields["factory"]), str(manifest_fields["metric"])

    pq.write_table(entity_table(kb, str(manifest_fields["entity_template"]), summaries), out / ENTITIES)
    text = text_vectors_from_shards(shards, kb, encoder_id)
    _save_npy(out / TEXT_VECTORS, text)
    from mel.index.faiss_ops import write_text_index  # text index: plan, train once, add (parallel), merge

    factory, index_params = write_text_index(out, text, factory, metric, index_cfg=index_cfg, shards_dir=shards,
                                             parallel_add=parallel_add)

    n_img, image_dim = 0, None
    if image_encoder_id is not None:
        vecs, owner, _ = image_vectors_from_shards(shards, len(kb), image_encoder_id)
        n_img = len(vecs)
        image_dim = int(vecs.shape[1]) if vecs.size else None
        _save_npy(out / IMAGE_OWNER, owner)
        _save_npy(out / IMAGE_VECTORS, vecs)
        if n_img:
            faiss.write_index(build_faiss(vecs, np.arange(n_img), "Flat", metric), str(out / IMAGE_INDEX))
        else:
            log.warning("no entity image could be embedded: the index has no image vectors")
    manifest = Manifest(
        encoder_id=encoder_id, dim=int(text.shape[1]), metric=metric, factory=factory, kb_hash=kb.content_hash(),
        config_hash=str(manifest_fields["config_hash"]), entity_template=str(manifest_fields["entity_template"]),
        counts={**{k: int(v) for k, v in (counts or {}).items()}, "entities": len(kb), "text_vectors": len(text),
                "image_vectors": n_img, "images_missing": int(images_missing)},
        image_encoder_id=image_encoder_id, image_dim=image_dim, files=file_sizes(out), version=int(version),
        parent=dict(parent) if parent is not None else None, index_params=index_params,
        summaries=dict(manifest_fields["summaries"]) if manifest_fields.get("summaries") else None,
    )
    _fsync_dir(out)
    write_manifest(out, manifest)
    return manifest


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
