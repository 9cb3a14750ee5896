"""Building the files of an index artifact: entity table, embedding shards, faiss indexes, manifest.

Both builders (the Ray Data job and the single-process loop in ``pipelines/index.py``) write embedding
shards with :class:`ShardWriter` and finish with :func:`assemble_index_dir`, so they produce the same
artifact. Layout of an index directory::

    manifest.json      written last (see mel.index.manifest)
    entities.parquet   row = position: position, id, name, aliases, description, attributes (JSON), images, text
    text.faiss         IndexIDMap2 over the factory index; ids = positions
    text.npy           float32 (n, d) entity text vectors, row = position
    image.faiss        (optional) one vector per entity image; ids = image rows (always a Flat index)
    image.npy          (optional) float32 (m, d_img)
    image_owner.npy    (optional) int64 (m,): entity position owning each image row
    shards/            text-*.parquet (entity_id, position, vector), image-*.parquet (owner, entity_id, image, vector)
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
from mel.kb.model import KB
from mel.text import entity_text

if TYPE_CHECKING:
    import faiss
    import pyarrow as pa

log = logging.getLogger(__name__)

ENTITIES = "entities.parquet"
TEXT_INDEX, TEXT_VECTORS = "text.faiss", "text.npy"
IMAGE_INDEX, IMAGE_VECTORS, IMAGE_OWNER = "image.faiss", "image.npy", "image_owner.npy"
SHARDS = "shards"
TEXT, IMAGE = "text", "image"
ENCODER_KEY = b"mel.encoder_id"
MANIFEST_FIELDS = ("encoder_id", "config_hash", "factory", "metric", "entity_template")


# ----------------------------------------------------------------------------- entity table
def entity_texts(kb: KB, template: str) -> list[str]:
    """The text embedded for each entity, in KB order (row = position)."""
    return [entity_text(e, template) for e in kb.entities]


def entity_table(kb: KB, template: str) -> pa.Table:
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
        "attributes": pa.array([json.dumps(e.attributes, ensure_ascii=False, sort_keys=True) for e in ents],
                               pa.string()),
        "images": pa.array([list(e.images) for e in ents], pa.list_(pa.string())),
        "text": pa.array(entity_texts(kb, template), pa.string()),
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
class ShardWriter:
    """Appends embedding batches and writes ``<kind>-NNNNN.parquet`` files of about ``shard_rows`` rows.

    Text shards hold (entity_id, position, vector); image shards (owner, entity_id, image, vector).
    Each file records the encoder id in its schema metadata.
    """

    def __init__(self, shards_dir: str | Path, kind: str, encoder_id: str, shard_rows: int) -> None:
        if kind not in (TEXT, IMAGE):
            raise ValueError(f"shard kind must be {TEXT!r} or {IMAGE!r}, got {kind!r}")
        self.dir = Path(shards_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kind, self.encoder_id, self.shard_rows = kind, encoder_id, shard_rows
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self.files: list[Path] = []
        self.rows = 0

    def add(self, columns: Mapping[str, Any]) -> None:
        vec = np.asarray(columns["vector"], dtype=np.float32)
        if vec.ndim != 2:
            raise ValueError(f"{self.kind} shard: vectors must be 2-D, got shape {vec.shape}")
        cols = {k: list(v) if k != "vector" else vec for k, v in columns.items()}
        self._pending.append(cols)
        self._pending_rows += len(vec)
        self.rows += len(vec)
        if self._pending_rows >= self.shard_rows:
            self._flush()

    def close(self) -> list[Path]:
        if self._pending_rows or not self.files:
            self._flush()
        return self.files

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts, self._pending, self._pending_rows = self._pending, [], 0
        keys = ["entity_id", "position"] if self.kind == TEXT else ["owner", "entity_id", "image"]
        cols: dict[str, pa.Array] = {}
        for k in keys:
            typ = pa.int64() if k in ("position", "owner") else pa.string()
            cols[k] = pa.array([x for p in parts for x in p[k]], typ)
        vecs = np.concatenate([p["vector"] for p in parts]) if parts else np.zeros((0, 0), np.float32)
        dim = vecs.shape[1] if vecs.ndim == 2 else 0
        cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim)
        table = pa.table(cols).replace_schema_metadata({ENCODER_KEY: self.encoder_id.encode()})
        path = self.dir / f"{self.kind}-{len(self.files):05d}.parquet"
        pq.write_table(table, path)
        self.files.append(path)


def read_shards(shards_dir: str | Path, kind: str, *, encoder_id: str | None = None) -> pa.Table:
    """Concatenate the ``kind`` shards of a directory; refuse shards made by another encoder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(shards_dir).glob(f"{kind}-*.parquet"))
    if not files:
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
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def text_vectors_from_shards(shards_dir: str | Path, kb: KB, encoder_id: str) -> np.ndarray:
    """(n, d) vectors with row = KB position; every entity exactly once, ids matching the KB."""
    t = read_shards(shards_dir, TEXT, encoder_id=encoder_id)
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


def image_vectors_from_shards(shards_dir: str | Path, n_entities: int,
                              encoder_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors (m, d), owner positions (m,), image paths) sorted by (owner, image order in the shards)."""
    t = read_shards(shards_dir, IMAGE, encoder_id=encoder_id)
    owner = t.column("owner").to_numpy().astype(np.int64)
    if len(owner) and (owner.min() < 0 or owner.max() >= n_entities):
        raise ArtifactMismatch(f"{shards_dir}: image shard owner outside 0..{n_entities - 1}")
    paths = t.column("image").to_pylist()
    order = np.lexsort((np.array(paths, dtype=object).astype(str), owner)) if len(owner) else np.zeros(0, np.int64)
    return shard_vectors(t)[order], owner[order], [paths[i] for i in order]


# ----------------------------------------------------------------------------- faiss
def build_faiss(vectors: np.ndarray, ids: np.ndarray, factory: str, metric: str) -> faiss.Index:
    """``IndexIDMap2(index_factory(d, factory, metric))``, trained on ``vectors`` when the index needs it."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"build_faiss needs a non-empty 2-D array, got shape {vectors.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(vectors),):
        raise ValueError(f"build_faiss: {len(vectors)} vectors but ids of shape {ids.shape}")
    if metric not in ("ip", "l2"):
        raise ConfigError(f"index.metric must be 'ip' or 'l2', got {metric!r}")
    if "IDMap" in factory:
        raise ConfigError(f"index.factory {factory!r}: leave out IDMap, the id mapping is added by the builder")
    metric_type = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    try:
        base = faiss.index_factory(vectors.shape[1], factory, metric_type)
    except RuntimeError as e:
        raise ConfigError(f"index.factory {factory!r}: faiss cannot build it: {str(e).strip()}") from e
    index = faiss.IndexIDMap2(base)
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as e:
            raise ConfigError(f"index.factory {factory!r}: training on {len(vectors)} vectors failed "
                              f"(too few for this factory? use 'Flat' for small KBs): {str(e).strip()}") from e
    index.add_with_ids(vectors, ids)
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set ``nprobe`` on the IVF index inside ``index`` (no-op for non-IVF indexes)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.nprobe = nprobe


# ----------------------------------------------------------------------------- assembly
def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def file_sizes(index_dir: str | Path) -> dict[str, int]:
    root = Path(index_dir)
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def assemble_index_dir(out_dir: str | Path, kb: KB, shards_dir: str | Path, manifest_fields: Mapping[str, Any], *,
                       image_encoder_id: str | None = None, images_missing: int = 0) -> Manifest:
    """Turn embedding shards into a complete index directory; the manifest is written last.

    ``manifest_fields`` must hold encoder_id, config_hash, factory, metric, entity_template.
    ``image_encoder_id`` given: image shards are read too. ``shards_dir`` is moved to ``out_dir/shards``
    when it lies elsewhere. ``out_dir`` should be the temp dir of :func:`mel.index.atomic.atomic_dir`.
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

    pq.write_table(entity_table(kb, str(manifest_fields["entity_template"])), out / ENTITIES)
    text = text_vectors_from_shards(shards, kb, encoder_id)
    _save_npy(out / TEXT_VECTORS, text)
    faiss.write_index(build_faiss(text, np.arange(len(text)), factory, metric), str(out / TEXT_INDEX))

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
        counts={"entities": len(kb), "text_vectors": len(text), "image_vectors": n_img,
                "images_missing": int(images_missing)},
        image_encoder_id=image_encoder_id, image_dim=image_dim, files=file_sizes(out),
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
