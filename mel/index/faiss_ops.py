"""faiss operations behind a :class:`~mel.index.faiss_plan.FaissPlan`: create, train (CPU or GPU), add, merge
(in memory or on disk), serialize, and write the text index file(s) of an index directory.

Build = train once on a seeded sample, then add every vector with its position as id. IVF indexes keep their
own ids (no wrapper, so their inverted lists can be merged on disk); other layouts sit in an ``IndexIDMap2``.
Parallel builders (``pipelines/faiss_build.py``) add each embedding shard into a copy of the trained index
and hand back the serialized partial indexes; :func:`build_text_indexes` merges them in shard order.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mel.errors import ConfigError, InputError
from mel.index.build import TEXT_INDEX
from mel.index.faiss_plan import FaissPlan, shard_ranges

if TYPE_CHECKING:
    import faiss

    from mel.config import IndexConfig

log = logging.getLogger(__name__)

SHARD_INDEX = "text-{:05d}.faiss"
PARTS_DIR = ".ondisk-parts"
ADD_CHUNK = 65_536  # vectors added per call (bounds the temporary copies faiss makes)
Ranges = Sequence[tuple[int, int]]
# (trained index, serialized) x (embedding shard files) x (search shard position ranges) -> per file, in file
# order: one serialized partial index per search shard.
ParallelAdd = Callable[[np.ndarray, Sequence[Path], Ranges], Iterable[list[np.ndarray]]]


def metric_type(metric: str) -> int:
    import faiss

    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ConfigError(f"index.metric must be 'ip' or 'l2', got {metric!r}")


def new_index(plan: FaissPlan) -> faiss.Index:
    """An empty, untrained index: the bare IVF for IVF layouts, else ``IndexIDMap2(index_factory(...))``."""
    import faiss

    try:
        base = faiss.index_factory(plan.dim, plan.factory, metric_type(plan.metric))
    except RuntimeError as e:
        raise ConfigError(f"index.factory {plan.factory!r}: faiss cannot build it: {str(e).strip()}") from e
    codes = faiss.downcast_index(extract_ivf(base) or base)
    if getattr(codes, "do_polysemous_training", False):
        codes.do_polysemous_training = False  # costly annealing, only useful for polysemous (Hamming) search
    index = base if plan.is_ivf else faiss.IndexIDMap2(base)
    set_search_params(index, nprobe=plan.nprobe, ef_search=plan.ef_search)
    return index


def training_sample(vectors: np.ndarray, plan: FaissPlan) -> np.ndarray:
    """``plan.train_size`` rows drawn without replacement with ``plan.seed`` (kept in position order)."""
    n = len(vectors)
    size = min(plan.train_size, n)
    if size >= n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(plan.seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def train_index(index: faiss.Index, sample: np.ndarray, plan: FaissPlan, *,
                use_gpu: bool = False) -> tuple[faiss.Index, str]:
    """Train ``index`` (when it needs it) on ``sample``; returns (the trained CPU index, 'cpu' or 'gpu').

    GPU: an IVF runs its k-means on a GPU flat index (the coarse quantizer itself, HNSW included, stays on the
    CPU); other layouts are cloned to the GPUs, trained, and copied back. Where faiss cannot put a layout on
    the GPU, training falls back to the CPU (logged)."""
    import faiss

    if index.is_trained:
        return index, "cpu"
    device = "cpu"
    try:
        if use_gpu:
            index, device = _train_gpu(index, sample, plan)
        else:
            index.train(sample)
    except RuntimeError as e:
        raise ConfigError(f"index.factory {plan.factory!r}: training on {len(sample)} vectors failed "
                          f"(too few for this factory? use 'auto' or 'Flat' for small KBs): {str(e).strip()}") from e
    set_search_params(index, nprobe=plan.nprobe, ef_search=plan.ef_search)
    assert isinstance(index, faiss.Index)
    return index, device


def _train_gpu(index: faiss.Index, sample: np.ndarray, plan: FaissPlan) -> tuple[faiss.Index, str]:
    import faiss

    ivf = extract_ivf(index)
    if ivf is not None:
        flat = faiss.IndexFlatIP(plan.dim) if plan.metric == "ip" else faiss.IndexFlatL2(plan.dim)
        gpu_flat = faiss.index_cpu_to_all_gpus(flat)
        ivf.clustering_index = gpu_flat
        try:
            index.train(sample)
        finally:
            ivf.clustering_index = None
        return index, "gpu"
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        log.warning("faiss cannot train %s on the GPU (%s); training on the CPU", plan.factory, str(e).strip())
        index.train(sample)
        return index, "cpu"
    gpu.train(sample)
    return faiss.index_gpu_to_cpu(gpu), "gpu"


def to_search_device(index: faiss.Index, use_gpu: bool) -> tuple[faiss.Index, str]:
    """The index to search with: cloned to all GPUs when ``use_gpu`` and faiss supports the layout there,
    else the CPU index itself (logged)."""
    if not use_gpu:
        return index, "cpu"
    import faiss

    try:
        return faiss.index_cpu_to_all_gpus(index), "gpu"
    except (RuntimeError, AttributeError) as e:
        log.warning("faiss cannot search this index on the GPU (%s); searching on the CPU", str(e).strip())
        return index, "cpu"


def extract_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """nprobe of an IVF (and efSearch >= nprobe of its HNSW coarse quantizer), or efSearch of an HNSW index;
    a no-op for layouts without these parameters."""
    import faiss

    ivf = extract_ivf(index)
    if ivf is not None:
        if nprobe is not None:
            ivf.nprobe = nprobe
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW) and (ef_search or nprobe):
            quantizer.hnsw.efSearch = max(ef_search or quantizer.hnsw.efSearch, ivf.nprobe)
        return
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(base, faiss.IndexHNSW) and ef_search:
        base.hnsw.efSearch = ef_search


def search_params(index: faiss.Index) -> dict[str, int]:
    """The search parameters in effect (nprobe, ef_search) for the manifest / logs."""
    import faiss

    out: dict[str, int] = {}
    ivf = extract_ivf(index)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            out["ef_search"] = int(quantizer.hnsw.efSearch)
    return out


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """``add_with_ids`` in chunks of :data:`ADD_CHUNK`."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(vectors),):
        raise ValueError(f"{len(vectors)} vectors but ids of shape {ids.shape}")
    for a in range(0, len(vectors), ADD_CHUNK):
        index.add_with_ids(np.ascontiguousarray(vectors[a:a + ADD_CHUNK], dtype=np.float32),
                           np.ascontiguousarray(ids[a:a + ADD_CHUNK]))


def serialize(index: faiss.Index) -> np.ndarray:
    import faiss

    return faiss.serialize_index(index)


def deserialize(buf: np.ndarray) -> faiss.Index:
    import faiss

    return faiss.deserialize_index(np.asarray(buf, dtype=np.uint8))


def partials_for(trained: np.ndarray, vectors: np.ndarray, positions: np.ndarray,
                 ranges: Ranges) -> list[np.ndarray]:
    """One serialized partial index per search shard: a copy of the trained index holding the given vectors
    whose position falls in that shard's range (ids = positions). What each parallel add task returns."""
    positions = np.asarray(positions, dtype=np.int64)
    out = []
    for start, stop in ranges:
        rows = np.flatnonzero((positions >= start) & (positions < stop))
        part = deserialize(trained)
        if len(rows):
            add_vectors(part, vectors[rows], positions[rows])
        out.append(serialize(part))
    return out


def read_text_shard(data: bytes | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(positions, vectors) of one text embedding shard: a Parquet file path or its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pa.BufferReader(data) if isinstance(data, bytes | bytearray | memoryview) else str(data)
    table = pq.read_table(source, columns=["position", "vector"])
    col = table.column("vector").combine_chunks()
    vectors = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, col.type.list_size)
    return table.column("position").to_numpy().astype(np.int64), vectors


def add_shard_file(trained: np.ndarray, shard: bytes | str | Path, ranges: Ranges) -> list[np.ndarray]:
    """Read one embedding shard and add it into copies of the trained index (see :func:`partials_for`)."""
    positions, vectors = read_text_shard(shard)
    return partials_for(trained, vectors, positions, ranges)


def sequential_add(trained: np.ndarray, files: Sequence[Path], ranges: Ranges) -> Iterator[list[np.ndarray]]:
    """The :data:`ParallelAdd` contract run in this process, one shard file after the other."""
    for f in files:
        yield add_shard_file(trained, f, ranges)


def _chunk_partials(trained: np.ndarray, vectors: np.ndarray, ranges: Ranges) -> Iterator[list[np.ndarray]]:
    for a in range(0, len(vectors), ADD_CHUNK * 4):
        chunk = vectors[a:a + ADD_CHUNK * 4]
        yield partials_for(trained, chunk, np.arange(a, a + len(chunk)), ranges)


def merge_on_disk(trained: np.ndarray, part_files: Sequence[Path], ivfdata: Path) -> faiss.Index:
    """A copy of the trained IVF whose inverted lists are the concatenation of ``part_files``' lists, stored
    in ``ivfdata`` (``OnDiskInvertedLists``; memory-mapped, so it may exceed RAM)."""
    from faiss.contrib.ondisk import merge_ondisk

    index = deserialize(trained)
    if extract_ivf(index) is None:
        raise ConfigError("on-disk merge needs an IVF index")
    merge_ondisk(index, [str(p) for p in part_files], str(ivfdata))
    return index


def build_text_indexes(out_dir: str | Path, vectors: np.ndarray, plan: FaissPlan, *, use_gpu: bool = False,
                       shard_files: Sequence[Path] = (), parallel_add: ParallelAdd | None = None) -> dict[str, Any]:
    """Train once, add every vector (id = row = position), and write the text index file(s) into ``out_dir``:
    ``text.faiss`` for one search shard, else ``text-NNNNN.faiss`` each holding a contiguous position range;
    for on-disk IVF also ``<stem>.ivfdata``. Returns the manifest's ``index_params``.

    ``parallel_add`` given (and more than one ``shard_files``, and a mergeable layout): each embedding shard
    is added by it into copies of the trained index, and the partial indexes are merged here in file order;
    else vectors are added in this process.
    """
    import faiss

    out = Path(out_dir)
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if vectors.ndim != 2 or n == 0 or vectors.shape[1] != plan.dim or n != plan.n_vectors:
        raise ValueError(f"build_text_indexes: vectors of shape {vectors.shape} for a plan of "
                         f"{plan.n_vectors} x {plan.dim}")
    index, device = train_index(new_index(plan), training_sample(vectors, plan), plan, use_gpu=use_gpu)
    trained = serialize(index)
    del index
    ranges = shard_ranges(n, plan.search_shards)
    names = [TEXT_INDEX] if len(ranges) == 1 else [SHARD_INDEX.format(j) for j in range(len(ranges))]
    parallel = parallel_add is not None and len(shard_files) > 1 and plan.mergeable
    partials: Iterable[list[np.ndarray]] | None = None
    if parallel:
        assert parallel_add is not None
        partials = parallel_add(trained, list(shard_files), ranges)
    elif plan.on_disk:
        partials = _chunk_partials(trained, vectors, ranges)

    if plan.on_disk:
        assert partials is not None
        _write_on_disk(out, trained, partials, names, ranges)
    elif partials is not None:
        accs = [deserialize(trained) for _ in ranges]
        count = 0
        for count, parts in enumerate(partials, 1):  # noqa: B007 (count is checked below)
            if len(parts) != len(ranges):
                raise RuntimeError(f"parallel add returned {len(parts)} partial indexes, expected {len(ranges)}")
            for acc, part in zip(accs, parts, strict=True):
                acc.merge_from(deserialize(part), 0)
        if count != len(shard_files):
            raise RuntimeError(f"parallel add returned results for {count} of {len(shard_files)} shard files")
        for acc, name, rng in zip(accs, names, ranges, strict=True):
            _check_total(acc, name, rng)
            faiss.write_index(acc, str(out / name))
    else:
        for (start, stop), name in zip(ranges, names, strict=True):
            acc = deserialize(trained)
            add_vectors(acc, vectors[start:stop], np.arange(start, stop))
            faiss.write_index(acc, str(out / name))
            del acc
    return {
        **plan.params(),
        "trained_on": device,
        "add": "parallel" if parallel else "single-process",
        "merge": "on-disk" if plan.on_disk else "in-memory" if partials is not None else "none",
        "shards": [{"file": name, "start": a, "stop": b} for name, (a, b) in zip(names, ranges, strict=True)],
    }


def _check_total(index: faiss.Index, name: str, rng: tuple[int, int]) -> None:
    """A merged shard must hold exactly its range's vectors (a lost or doubled partial would break this)."""
    if index.ntotal != rng[1] - rng[0]:
        raise RuntimeError(f"{name}: the merged index holds {index.ntotal} vectors, positions {rng[0]}..{rng[1]} "
                           f"are {rng[1] - rng[0]}")


def _write_on_disk(out: Path, trained: np.ndarray, partials: Iterable[list[np.ndarray]], names: list[str],
                   ranges: Ranges) -> None:
    parts_dir = out / PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    files: list[list[Path]] = [[] for _ in names]
    try:
        for u, parts in enumerate(partials):
            if len(parts) != len(names):
                raise RuntimeError(f"parallel add returned {len(parts)} partial indexes, expected {len(names)}")
            for j, part in enumerate(parts):
                f = parts_dir / f"{j:05d}-{u:05d}.faiss"
                np.asarray(part, dtype=np.uint8).tofile(f)
                files[j].append(f)
        import faiss

        for j, (name, rng) in enumerate(zip(names, ranges, strict=True)):
            index = merge_on_disk(trained, files[j], out / (Path(name).stem + ".ivfdata"))
            _check_total(index, name, rng)
            faiss.write_index(index, str(out / name))
            del index
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)


def read_text_index(path: Path, *, on_disk: bool) -> faiss.Index:
    """Read one text index file; on-disk IVF lists are memory-mapped from the ``.ivfdata`` next to it."""
    import faiss

    if not path.is_file():
        raise InputError("text index file is missing", path=str(path))
    return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else 0)


def num_gpus() -> int:
    """GPUs faiss can use (0 with the CPU build of faiss)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def write_text_index(out_dir: str | Path, vectors: np.ndarray, factory: str, metric: str, *,
                     index_cfg: IndexConfig | None = None, shards_dir: str | Path | None = None,
                     parallel_add: ParallelAdd | None = None) -> tuple[str, dict[str, Any]]:
    """Plan (``factory`` 'auto' or an override; knobs from ``index_cfg``), build and write the text index of an
    index directory; returns (resolved factory string, manifest ``index_params``). ``parallel_add`` is used
    for the embedding shards (``text-*.parquet``) of ``shards_dir`` when there are several."""
    from mel.config import IndexConfig
    from mel.index.faiss_plan import choose_factory, resolve_use_gpu

    base = index_cfg if index_cfg is not None else IndexConfig()
    cfg = base.model_copy(update={"factory": factory, "metric": metric})
    vectors = np.asarray(vectors, dtype=np.float32)
    plan = choose_factory(len(vectors), int(vectors.shape[1]), cfg)
    files = sorted(Path(shards_dir).glob("text-*.parquet")) if shards_dir is not None else []
    params = build_text_indexes(out_dir, vectors, plan, use_gpu=resolve_use_gpu(cfg.use_gpu, num_gpus()),
                                shard_files=files, parallel_add=parallel_add)
    log.info("text index %s (%s, %d vectors, %d shard(s), add %s, merge %s, trained on %s)", plan.factory,
             plan.chosen_by, len(vectors), len(params["shards"]), params["add"], params["merge"], params["trained_on"])
    return plan.factory, params
