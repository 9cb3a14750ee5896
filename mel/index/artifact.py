"""Loading and querying an index artifact (see mel.index.build for the layout).

Scores are "higher is better" everywhere: the inner product for metric 'ip' (cosine on normalised
vectors), the negative squared L2 distance for metric 'l2'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mel.errors import ArtifactMismatch, InputError
from mel.index.build import (
    ENTITIES,
    IMAGE_INDEX,
    IMAGE_OWNER,
    IMAGE_VECTORS,
    TEXT_INDEX,
    TEXT_VECTORS,
)
from mel.index.manifest import REBUILD_HINT, Manifest, check_compatible, read_manifest
from mel.types import Entity

if TYPE_CHECKING:
    import faiss

    from mel.index.faiss_shards import ShardedIndex
    from mel.kb.model import KB


class IndexArtifact:
    """One loaded index: entity table, text vectors + faiss index, optional image vectors + index."""

    def __init__(self, path: Path, manifest: Manifest, columns: dict[str, list], text_index: faiss.Index,
                 text_vectors: np.ndarray, image_index: faiss.Index | None = None,
                 image_vectors: np.ndarray | None = None, image_owner: np.ndarray | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.ids: list[str] = columns["id"]
        self._cols = columns
        self._pos = {eid: i for i, eid in enumerate(self.ids)}
        self._text_index = text_index
        self._text_vectors = text_vectors
        self._image_index = image_index
        self._image_vectors = image_vectors
        self._image_owner = image_owner
        self._ip = manifest.metric == "ip"
        self._n_image_owners = len(np.unique(image_owner)) if image_owner is not None else 0
        self.search_info: dict[str, object] = {"factory": manifest.factory, "shards": 1, "device": "cpu"}
        """Text search settings in effect: factory, shards, device, nprobe / ef_search (IVF)."""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, *, expect_encoder_id: str | None = None, expect_dim: int | None = None,
             expect_image_encoder_id: str | None = None, expect_metric: str | None = None,
             nprobe: int | None = None, use_gpu: str | bool = False) -> IndexArtifact:
        """Load and verify an index directory. ``expect_*`` (None: not checked) refuse an index built with
        other settings (ArtifactMismatch); a missing directory or manifest (incomplete build) or a damaged
        file raises InputError / ArtifactMismatch naming it. ``nprobe`` applies to IVF indexes (None: the
        value the manifest records); ``use_gpu`` ('auto', 'always', 'never' or a bool) searches on GPU with
        faiss-gpu. Several text index shards are searched in parallel and merged; what is in effect is in
        :attr:`search_info`."""
        import faiss
        import pyarrow.parquet as pq

        root = Path(path)
        manifest = read_manifest(root)
        check_compatible(manifest, encoder_id=expect_encoder_id, dim=expect_dim, metric=expect_metric,
                         image_encoder_id=expect_image_encoder_id, where=root)
        for name, size in manifest.files.items():
            f = root / name
            if not f.is_file():
                raise ArtifactMismatch(f"index {root}: file {name} listed in the manifest is missing; {REBUILD_HINT}")
            if f.stat().st_size != size:
                raise ArtifactMismatch(f"index {root}: file {name} has {f.stat().st_size} bytes, the manifest "
                                       f"records {size}; the index is damaged; {REBUILD_HINT}")
        shard_specs = text_shards(manifest)
        for name in (ENTITIES, TEXT_VECTORS, *(f for f, _, _ in shard_specs)):
            if not (root / name).is_file():
                raise ArtifactMismatch(f"index {root}: {name} is missing; {REBUILD_HINT}")
        n, dim = manifest.counts["entities"], manifest.dim
        table = pq.read_table(root / ENTITIES)
        if table.num_rows != n:
            raise ArtifactMismatch(f"index {root}: {ENTITIES} has {table.num_rows} rows, manifest counts {n}")
        columns = {c: table.column(c).to_pylist() for c in
                   ("id", "name", "aliases", "description", "attributes", "images", "text")}
        text_vectors = np.load(root / TEXT_VECTORS, mmap_mode="r", allow_pickle=False)
        if text_vectors.shape != (n, dim) or text_vectors.dtype != np.float32:
            raise ArtifactMismatch(f"index {root}: {TEXT_VECTORS} has shape {text_vectors.shape} "
                                   f"{text_vectors.dtype}, expected ({n}, {dim}) float32")
        text_index, search_info = _load_text_index(root, manifest, shard_specs, nprobe=nprobe, use_gpu=use_gpu)
        image_index = image_vectors = image_owner = None
        if manifest.counts["image_vectors"] > 0:
            m = manifest.counts["image_vectors"]
            image_index = faiss.read_index(str(root / IMAGE_INDEX))
            image_vectors = np.load(root / IMAGE_VECTORS, mmap_mode="r", allow_pickle=False)
            image_owner = np.load(root / IMAGE_OWNER, allow_pickle=False)
            if image_index.ntotal != m or len(image_vectors) != m or image_owner.shape != (m,):
                raise ArtifactMismatch(f"index {root}: image files disagree with the manifest count {m}")
            if m and (np.diff(image_owner) < 0).any():
                raise ArtifactMismatch(f"index {root}: {IMAGE_OWNER} is not sorted by owner")
        art = cls(root, manifest, columns, text_index, text_vectors, image_index, image_vectors, image_owner)
        art.search_info = search_info
        return art

    def check_kb(self, kb: KB) -> None:
        """Refuse a KB other than the one the index was built from."""
        h = kb.content_hash()
        if h != self.manifest.kb_hash:
            raise ArtifactMismatch(f"index {self.path}: built from a KB with content hash {self.manifest.kb_hash}, "
                                   f"this KB has {h}; {REBUILD_HINT}")

    # ------------------------------------------------------------------ entities
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._pos

    @property
    def has_images(self) -> bool:
        return self._image_index is not None

    def position(self, entity_id: str) -> int:
        try:
            return self._pos[entity_id]
        except KeyError:
            raise KeyError(f"entity {entity_id!r} is not in index {self.path}") from None

    def entity(self, entity_id: str) -> Entity:
        i = self.position(entity_id)
        c = self._cols
        return Entity(id=c["id"][i], name=c["name"][i], aliases=tuple(c["aliases"][i]),
                      description=c["description"][i], attributes=json.loads(c["attributes"][i]),
                      images=tuple(c["images"][i]))

    def name(self, entity_id: str) -> str:
        return self._cols["name"][self.position(entity_id)]

    def text(self, entity_id: str) -> str:
        """The entity text that was embedded."""
        return self._cols["text"][self.position(entity_id)]

    # ------------------------------------------------------------------ search
    def _queries(self, queries: np.ndarray, dim: int | None, what: str) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != dim:
            raise InputError(f"{what} queries must have shape (n, {dim}), got {np.shape(queries)}")
        return q

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        return raw if self._ip else -raw

    def search_text(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` entities per query: scores (n, k) (padded with -inf when fewer were found) and ids."""
        q = self._queries(queries, self.manifest.dim, "text")
        k = max(1, min(k, len(self)))
        raw, pos = self._text_index.search(q, k)
        scores = self._scores(raw).astype(np.float32)
        scores[pos < 0] = -np.inf
        ids = [[self.ids[p] for p in row if p >= 0] for row in pos]
        return scores, ids

    def search_image(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` entities per query by their best-matching image (max over an entity's images): scores
        (n, k) padded with -inf, and ids. Empty results ((n, 0), empty lists) when the index holds no image
        vectors (see :attr:`has_images`)."""
        if self._image_index is None or self._image_owner is None:
            n = 1 if np.ndim(queries) == 1 else len(queries)
            return np.zeros((n, 0), dtype=np.float32), [[] for _ in range(n)]
        q = self._queries(queries, self.manifest.image_dim, "image")
        m = self._image_index.ntotal
        k = max(1, min(k, self._n_image_owners))
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_ids: list[list[str]] = []
        pool = min(m, max(4 * k, k + 16))
        while True:
            raw, rows = self._image_index.search(q, pool)
            best: list[dict[int, float]] = []
            for srow, rrow in zip(self._scores(raw), rows, strict=True):
                per: dict[int, float] = {}
                for s, r in zip(srow.tolist(), rrow.tolist(), strict=True):
                    if r >= 0:
                        o = int(self._image_owner[r])
                        if o not in per or s > per[o]:
                            per[o] = s
                best.append(per)
            if pool >= m or all(len(b) >= k for b in best):
                break
            pool = min(m, pool * 2)
        for i, per in enumerate(best):
            top = sorted(per.items(), key=lambda t: (-t[1], t[0]))[:k]
            out_scores[i, : len(top)] = [s for _, s in top]
            out_ids.append([self.ids[o] for o, _ in top])
        return out_scores, out_ids

    def text_scores(self, query_vec: np.ndarray, ids: list[str]) -> np.ndarray:
        """Exact text scores of ``query_vec`` (d,) against the given entities, shape (len(ids),)."""
        q = self._queries(query_vec, self.manifest.dim, "text")[0]
        vecs = np.asarray(self._text_vectors[[self.position(e) for e in ids]], dtype=np.float32)
        return self._pair_scores(vecs, q)

    def image_scores(self, query_vec: np.ndarray, ids: list[str]) -> list[float | None]:
        """Exact image scores of ``query_vec`` (d_img,), max over each entity's images; None for an entity
        without image vectors (every entry None when the index holds none)."""
        pos = [self.position(e) for e in ids]
        if self._image_vectors is None or self._image_owner is None:
            return [None] * len(ids)
        q = self._queries(query_vec, self.manifest.image_dim, "image")[0]
        starts = np.searchsorted(self._image_owner, pos, side="left").tolist()
        ends = np.searchsorted(self._image_owner, pos, side="right").tolist()
        out: list[float | None] = []
        for a, b in zip(starts, ends, strict=True):
            if b > a:
                out.append(float(self._pair_scores(np.asarray(self._image_vectors[a:b], dtype=np.float32), q).max()))
            else:
                out.append(None)
        return out

    def entity_image_vectors(self, ids: list[str]) -> list[np.ndarray | None]:
        """Each entity's image vectors, (k, d_img) float32 copies (None for an entity without image vectors; every
        entry None when the index holds none)."""
        pos = [self.position(e) for e in ids]
        if self._image_vectors is None or self._image_owner is None:
            return [None] * len(ids)
        starts = np.searchsorted(self._image_owner, pos, side="left").tolist()
        ends = np.searchsorted(self._image_owner, pos, side="right").tolist()
        return [np.array(self._image_vectors[a:b], dtype=np.float32) if b > a else None
                for a, b in zip(starts, ends, strict=True)]

    def _pair_scores(self, vecs: np.ndarray, q: np.ndarray) -> np.ndarray:
        if self._ip:
            return (vecs @ q).astype(np.float32)
        return -((vecs - q) ** 2).sum(axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- text index files
def text_shards(manifest: Manifest) -> list[tuple[str, int, int]]:
    """(file, first position, end position) of each text index shard the manifest records; one ``text.faiss``
    over every position for indexes without ``index_params.shards``."""
    shards = manifest.index_params.get("shards") if manifest.index_params else None
    n = manifest.counts["entities"]
    if not shards:
        return [(TEXT_INDEX, 0, n)]
    try:
        specs = [(str(s["file"]), int(s["start"]), int(s["stop"])) for s in shards]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactMismatch(f"manifest index_params.shards is malformed ({e!r}); {REBUILD_HINT}") from None
    covered = 0
    for name, start, stop in specs:
        if start != covered or stop < start or "/" in name or name.startswith("."):
            raise ArtifactMismatch(f"manifest index_params.shards: {name} covers positions {start}..{stop}, "
                                   f"expected to start at {covered}; {REBUILD_HINT}")
        covered = stop
    if covered != n:
        raise ArtifactMismatch(f"manifest index_params.shards cover {covered} positions, the index has {n}; "
                               f"{REBUILD_HINT}")
    return specs


def _load_text_index(root: Path, manifest: Manifest, specs: list[tuple[str, int, int]], *, nprobe: int | None,
                     use_gpu: str | bool) -> tuple[faiss.Index | ShardedIndex, dict[str, object]]:
    from mel.index.faiss_ops import num_gpus, read_text_index, search_params, set_search_params, to_search_device
    from mel.index.faiss_plan import resolve_use_gpu
    from mel.index.faiss_shards import ShardedIndex

    params = manifest.index_params or {}
    gpu = resolve_use_gpu(use_gpu if isinstance(use_gpu, str) else ("always" if use_gpu else "never"), num_gpus())
    want_nprobe = nprobe if nprobe is not None else params.get("nprobe")
    indexes, devices, info = [], set(), {}
    for name, start, stop in specs:
        index = read_text_index(root / name, on_disk=bool(params.get("on_disk")))
        if index.ntotal != stop - start or index.d != manifest.dim:
            raise ArtifactMismatch(f"index {root}: {name} holds {index.ntotal} vectors of dim {index.d}, expected "
                                   f"{stop - start} of dim {manifest.dim}; {REBUILD_HINT}")
        set_search_params(index, nprobe=want_nprobe, ef_search=params.get("ef_search"))
        info = search_params(index)
        index, device = to_search_device(index, gpu)
        indexes.append(index)
        devices.add(device)
    info = {"factory": manifest.factory, "shards": len(indexes), "device": "/".join(sorted(devices)), **info}
    if len(indexes) == 1:
        return indexes[0], info
    return ShardedIndex(indexes, larger_is_better=manifest.metric == "ip"), info
