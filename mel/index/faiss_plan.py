"""Which faiss index to build: :func:`choose_factory` turns the KB size and :class:`~mel.config.IndexConfig`
into a :class:`FaissPlan` (factory string + parameters), recorded in the manifest's ``index_params``.

``factory: auto``: exact ``Flat`` below ``flat_max_vectors``; from there ``IVF<nlist>_HNSW<M>`` (an HNSW graph
over the IVF centroids as coarse quantizer) with flat codes; when the flat vectors would not fit
``memory_budget_mb``, ``SQ8`` codes (1 byte per dimension), or ``PQ<m>`` codes when SQ8 does not fit either.
An explicit factory string is used as given; its parameters (nlist, M, PQ m) are read back from it.
Everything here is pure (no faiss import): the same inputs always give the same plan.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from mel.config import IndexConfig
from mel.errors import ConfigError

AUTO = "auto"
ID_BYTES = 8  # an int64 id per vector (IVF lists, IDMap)
MIN_POINTS_PER_LIST = 39  # faiss k-means wants at least this many training points per centroid
MIN_TRAIN = 10_000  # PQ trains 2^nbits centroids per sub-quantizer: ~39 * 256 points
TRAIN_SAMPLE_CAP = 250_000
_IVF = re.compile(r"(?:^|,)IVF(\d+)(?:_HNSW(\d+))?,")
_PQ = re.compile(r"(?:^|,)PQ(\d+)(?:x(\d+))?")
_HNSW = re.compile(r"^HNSW(\d+)")
_SQ = re.compile(r"(?:^|,)SQ(\d+|fp16|bf16)")


@dataclass(frozen=True)
class FaissPlan:
    """How one text index is built and searched. ``factory`` is the resolved faiss factory string."""

    factory: str
    metric: str
    chosen_by: str  # "auto" or "config"
    n_vectors: int
    dim: int
    codec: str  # "Flat", "SQ8", "PQ48", ... (or the whole factory for an unknown layout)
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None
    train_size: int = 0
    seed: int = 0
    search_shards: int = 1
    on_disk: bool = False
    memory_budget_mb: int = 0
    estimated_mb: float = 0.0

    @property
    def is_ivf(self) -> bool:
        return self.nlist is not None

    @property
    def mergeable(self) -> bool:
        """Partial indexes of this layout can be merged (IVF lists, or flat codes: Flat, SQ, PQ)."""
        return self.is_ivf or not self.factory.startswith(("HNSW", "NSG", "LSH", "IMI"))

    def params(self) -> dict[str, Any]:
        """JSON-able parameters for the manifest's ``index_params``."""
        return asdict(self)


def system_memory_mb() -> int:
    """Physical memory of this machine in MiB (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def auto_nlist(n: int) -> int:
    """~4*sqrt(n) rounded to the nearest power of two, with at least 39 vectors per list (and >= 1)."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return max(1, nlist)


def auto_nprobe(nlist: int) -> int:
    """nlist/64 within 8..256, never more than nlist."""
    return min(nlist, max(8, min(256, nlist // 64)))


def pq_sub_quantizers(dim: int, m: int) -> int:
    """The largest divisor of ``dim`` that is <= ``m`` (faiss PQ needs dim % m == 0)."""
    m = max(1, min(m, dim))
    while dim % m:
        m -= 1
    return m


def code_bytes(codec: str, dim: int, pq_m: int | None = None, pq_nbits: int | None = None) -> float:
    """Bytes per stored vector code."""
    if codec == "Flat":
        return 4.0 * dim
    if codec == "SQ8":
        return float(dim)
    if codec in ("SQfp16", "SQbf16"):
        return 2.0 * dim
    m = re.fullmatch(r"SQ(\d+)", codec)
    if m:
        return dim * int(m.group(1)) / 8
    if pq_m is not None:
        return math.ceil(pq_m * (pq_nbits or 8) / 8)
    return 4.0 * dim


def estimate_mb(codec: str, n: int, dim: int, *, nlist: int | None = None, hnsw_m: int | None = None,
                pq_m: int | None = None, pq_nbits: int | None = None) -> float:
    """Estimated in-memory size of the index: codes + ids (+ centroids and their HNSW links for IVF)."""
    per = code_bytes(codec, dim, pq_m, pq_nbits) + ID_BYTES
    extra = 0.0
    if nlist is not None:
        extra = nlist * (4.0 * dim + 2 * (hnsw_m or 0) * 4)
    if pq_m is not None:
        extra += (2 ** (pq_nbits or 8)) * dim * 4.0  # PQ centroids
    return (n * per + extra) / 2**20


def train_size(n: int, nlist: int | None, cfg: IndexConfig, *, needs_training: bool) -> int:
    """Vectors in the training sample: config, else max(40*nlist, 10000) capped at 250000 (and at n)."""
    if not needs_training:
        return 0
    if cfg.train_sample is not None:
        return min(n, cfg.train_sample)
    return min(n, max(40 * (nlist or 0), MIN_TRAIN), TRAIN_SAMPLE_CAP)


def choose_factory(n_vectors: int, dim: int, cfg: IndexConfig, *, memory_mb: int | None = None) -> FaissPlan:
    """The index plan for ``n_vectors`` vectors of ``dim`` dimensions.

    ``cfg.factory == 'auto'`` chooses the layout (see the module doc); any other string is an override used
    as given. ``memory_mb`` is the budget when ``cfg.memory_budget_mb`` is None (default: half of
    :func:`system_memory_mb`). Raises ConfigError for settings that cannot work (IDMap in the factory,
    on_disk='always' without IVF, an unusable search_shards).
    """
    if n_vectors < 1 or dim < 1:
        raise ConfigError(f"cannot plan an index for {n_vectors} vectors of dim {dim}")
    factory = cfg.factory.strip()
    if "IDMap" in factory:
        raise ConfigError(f"index.factory {factory!r}: leave out IDMap, the id mapping is added by the builder")
    budget = cfg.memory_budget_mb or memory_mb or max(1, system_memory_mb() // 2)
    if factory == AUTO:
        nlist = hnsw_m = pq_m = pq_nbits = None
        if n_vectors >= cfg.flat_max_vectors:
            nlist = cfg.nlist or auto_nlist(n_vectors)
            hnsw_m = cfg.hnsw_m
        codec = "Flat"
        if estimate_mb("Flat", n_vectors, dim, nlist=nlist, hnsw_m=hnsw_m) > budget:
            codec = "SQ8"
            if estimate_mb("SQ8", n_vectors, dim, nlist=nlist, hnsw_m=hnsw_m) > budget:
                pq_m, pq_nbits = pq_sub_quantizers(dim, cfg.pq_m), cfg.pq_nbits
                codec = f"PQ{pq_m}" if pq_nbits == 8 else f"PQ{pq_m}x{pq_nbits}"
        prefix = "" if nlist is None else f"IVF{nlist}_HNSW{hnsw_m}," if hnsw_m else f"IVF{nlist},"
        factory = prefix + codec
        chosen_by = AUTO
    else:
        nlist, hnsw_m, pq_m, pq_nbits, codec = parse_factory(factory)
        chosen_by = "config"
    nprobe = None
    if nlist is not None:
        nprobe = min(nlist, cfg.nprobe) if cfg.nprobe is not None else auto_nprobe(nlist)
    ef = None
    if hnsw_m is not None:
        ef = cfg.ef_search or max(64, 2 * (nprobe or 0))
    needs_training = nlist is not None or pq_m is not None or codec.startswith("SQ") or "OPQ" in factory
    est = estimate_mb(codec, n_vectors, dim, nlist=nlist, hnsw_m=hnsw_m, pq_m=pq_m, pq_nbits=pq_nbits)
    on_disk = cfg.on_disk == "always" or (cfg.on_disk == AUTO and nlist is not None and est > budget)
    if on_disk and nlist is None:
        raise ConfigError(f"index.on_disk='always' needs an IVF index; factory {factory!r} is not one")
    shards = min(cfg.search_shards, n_vectors)
    return FaissPlan(
        factory=factory, metric=cfg.metric, chosen_by=chosen_by, n_vectors=n_vectors, dim=dim, codec=codec,
        nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef, pq_m=pq_m, pq_nbits=pq_nbits,
        train_size=train_size(n_vectors, nlist, cfg, needs_training=needs_training),
        seed=cfg.seed, search_shards=shards, on_disk=on_disk, memory_budget_mb=int(budget),
        estimated_mb=round(est, 3))


def parse_factory(factory: str) -> tuple[int | None, int | None, int | None, int | None, str]:
    """(nlist, hnsw M, pq m, pq nbits, codec) read from a factory string ('IVF1024_HNSW32,PQ48x8', 'HNSW32',
    'SQ8', ...); None where the string does not say."""
    nlist = hnsw_m = pq_m = pq_nbits = None
    ivf = _IVF.search(factory)
    if ivf:
        nlist = int(ivf.group(1))
        hnsw_m = int(ivf.group(2)) if ivf.group(2) else None
    else:
        hnsw = _HNSW.match(factory)
        if hnsw:
            hnsw_m = int(hnsw.group(1))
    pq = _PQ.search(factory)
    if pq:
        pq_m, pq_nbits = int(pq.group(1)), int(pq.group(2) or 8)
    codec = factory.rsplit(",", 1)[-1]
    sq = _SQ.search(factory)
    if sq:
        codec = f"SQ{sq.group(1)}"
    elif pq:
        codec = codec if codec.startswith("PQ") else f"PQ{pq_m}"
    elif codec.startswith("HNSW"):
        codec = "Flat"
    return nlist, hnsw_m, pq_m, pq_nbits, codec


def resolve_use_gpu(setting: str, num_gpus: int) -> bool:
    """Whether to train/search on GPU: 'auto' when a GPU is visible to faiss, 'always' (fails without one),
    'never'."""
    if setting == "never":
        return False
    if setting == "always":
        if num_gpus < 1:
            raise ConfigError("index.use_gpu='always' but faiss sees no GPU (faiss-gpu not installed, or no "
                              "visible device); use 'auto' or 'never'")
        return True
    if setting == AUTO:
        return num_gpus > 0
    raise ConfigError(f"index.use_gpu must be 'auto', 'always' or 'never', got {setting!r}")


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous position ranges [start, stop) covering 0..n, sizes differing by at most one."""
    shards = max(1, min(shards, n))
    bounds = [n * i // shards for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]
