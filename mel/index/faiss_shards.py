"""Searching several text index shards as one: each shard holds a range of positions (ids are global
positions); queries go to every shard in parallel threads (faiss releases the GIL while it searches) and the
per-shard top-k lists are merged by score.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss


def merge_topk(distances: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int, *,
               larger_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard faiss results (each (n, k_i), id -1 = empty slot) into the best ``k`` per query.

    ``larger_is_better``: True for inner product, False for L2 distances. Empty slots go last and come out as
    id -1 with the worst possible distance (-inf for ip, +inf for l2). Ties keep shard order, then rank order.
    """
    if not distances:
        raise ValueError("merge_topk needs at least one shard result")
    d = np.concatenate([np.asarray(x, dtype=np.float32) for x in distances], axis=1)
    i = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids], axis=1)
    if d.shape != i.shape:
        raise ValueError(f"distances {d.shape} and ids {i.shape} differ in shape")
    worst = -np.inf if larger_is_better else np.inf
    d = np.where(i < 0, worst, d)
    key = -d if larger_is_better else d
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    out_d = np.take_along_axis(d, order, axis=1)
    out_i = np.take_along_axis(i, order, axis=1)
    if out_d.shape[1] < k:  # fewer candidates than k in all shards together
        pad = k - out_d.shape[1]
        out_d = np.pad(out_d, ((0, 0), (0, pad)), constant_values=worst)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_d, out_i


class ShardedIndex:
    """Several faiss indexes searched as one (``search``, ``ntotal``, ``d`` like a faiss index)."""

    def __init__(self, shards: Sequence[faiss.Index], *, larger_is_better: bool, threads: int | None = None) -> None:
        if not shards:
            raise ValueError("ShardedIndex needs at least one shard")
        dims = {int(s.d) for s in shards}
        if len(dims) != 1:
            raise ValueError(f"index shards have different dimensions: {sorted(dims)}")
        self.shards = list(shards)
        self.d = dims.pop()
        self.ntotal = sum(int(s.ntotal) for s in self.shards)
        self.larger_is_better = larger_is_better
        self._threads = threads or len(self.shards)
        self._pool: ThreadPoolExecutor | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.shards) == 1:
            return self.shards[0].search(queries, k)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="faiss-shard")
        results = list(self._pool.map(lambda s: s.search(queries, min(k, max(1, int(s.ntotal)))), self.shards))
        return merge_topk([r[0] for r in results], [r[1] for r in results], k,
                          larger_is_better=self.larger_is_better)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self) -> None:
        self.close()
