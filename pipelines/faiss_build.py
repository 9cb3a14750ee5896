"""Distributed faiss build: the trained (empty) index is shipped once to Ray tasks; each task reads one text
embedding shard (``shards/text-*.parquet``), adds its vectors with ``add_with_ids`` (ids = entity positions)
into a copy of the trained index, and returns the serialized partial index(es) -- one per search shard. The
driver merges them in shard order (in memory, or on disk for IVF; see
:func:`mel.index.faiss_ops.build_text_indexes`), so the result equals a single-process build trained on the
same sample.

The shard files' bytes travel through the object store (tasks never open driver paths), so this also runs on a
cluster without a shared filesystem.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mel.config import Config

log = logging.getLogger("mel.index")


def _add_shard_task(trained: np.ndarray, shard: bytes, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """Ray task body: one embedding shard (Parquet bytes) -> serialized partial index per search shard."""
    from mel.index.faiss_ops import add_shard_file

    return add_shard_file(trained, shard, ranges)


class RayParallelAdd:
    """:data:`mel.index.faiss_ops.ParallelAdd` with Ray tasks (one per embedding shard file).

    Results come back in file order; at most ``max_in_flight`` tasks (default: the cluster's CPUs, at least 2)
    are submitted at once, so shard bytes and partial indexes do not pile up in the object store.
    """

    def __init__(self, *, num_cpus: float = 1, max_in_flight: int | None = None) -> None:
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight
        self.tasks = 0

    @classmethod
    def from_config(cls, cfg: Config) -> RayParallelAdd:
        return cls(num_cpus=cfg.pipelines.index.cpus_per_worker)

    def __call__(self, trained: np.ndarray, files: Sequence[Path],
                 ranges: Sequence[tuple[int, int]]) -> Iterator[list[np.ndarray]]:
        import ray

        window = self.max_in_flight or max(2, int(ray.cluster_resources().get("CPU", 2)))
        task = ray.remote(_add_shard_task).options(num_cpus=self.num_cpus, name="faiss_add_shard")
        trained_ref = ray.put(trained)
        todo = deque(Path(f) for f in files)
        pending: deque[Any] = deque()
        log.info("faiss: adding %d embedding shards in Ray tasks (%d at a time)", len(todo), window)
        try:
            while todo or pending:
                while todo and len(pending) < window:
                    pending.append(task.remote(trained_ref, todo.popleft().read_bytes(), list(ranges)))
                    self.tasks += 1
                yield ray.get(pending.popleft())
        finally:
            for ref in pending:  # an error (or the consumer stopped): do not leave tasks running
                ray.cancel(ref)
