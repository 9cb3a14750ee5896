"""Benchmark dataset adapters: ``load_dataset(name, root)`` gives a :class:`Dataset` (KB + mentions per split)."""

from mel.datasets.base import Dataset, DatasetLoader
from mel.datasets.registry import (
    DATASETS,
    dataset_dir,
    dataset_names,
    load_dataset,
    register_dataset,
    resolve_data_root,
)

__all__ = ["DATASETS", "Dataset", "DatasetLoader", "dataset_dir", "dataset_names", "load_dataset",
           "register_dataset", "resolve_data_root"]
