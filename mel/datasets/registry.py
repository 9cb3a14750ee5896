"""Registry of dataset adapters by name, and :func:`load_dataset`.

The data root is resolved from the explicit argument, else ``$MEL_DATA_DIR``, else ``<repo>/../shared/data``.
Each adapter declares the sub-folder it reads (``richpedia-mel``, ``wikimel``...); a root that already is
that folder is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mel.datasets.base import Dataset, DatasetLoader
from mel.errors import InputError
from mel.registry import Registry

DATA_DIR_ENV = "MEL_DATA_DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered adapter: its loader, the folder name under the data root, and a file that marks it."""

    name: str
    folder: str
    marker: str
    loader: DatasetLoader

    def __call__(self, root: Path) -> Dataset:
        return self.loader(root)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, folder: str, marker: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator registering ``loader(dataset_dir) -> Dataset`` under ``name``.

    ``folder`` is the dataset's folder under the data root; ``marker`` a file that must exist in it.
    """

    def deco(loader: DatasetLoader) -> DatasetLoader:
        DATASETS.register(name)(DatasetSpec(name=name, folder=folder, marker=marker, loader=loader))
        return loader

    return deco


def _load_builtin() -> None:
    # Importing the adapter modules registers them (they import only the standard library).
    from mel.datasets import ameli, demo, richpedia, wikimel  # noqa: F401


def dataset_names() -> list[str]:
    _load_builtin()
    return DATASETS.names()


def default_data_root() -> Path:
    """``$MEL_DATA_DIR`` if set, else ``<repo>/../shared/data`` (the repo being the folder holding ``mel/``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root`` when given, else ``$MEL_DATA_DIR``, else ``<repo>/../shared/data``."""
    return Path(root) if root is not None else default_data_root()


def dataset_dir(name: str, root: str | Path | None = None) -> Path:
    """The folder of dataset ``name``: ``<root>/<folder>``, or ``root`` itself when it holds the marker file."""
    _load_builtin()
    spec = DATASETS.get(name)
    base = resolve_data_root(root)
    for candidate in (base / spec.folder, base):
        if (candidate / spec.marker).is_file():
            return candidate
    how = "argument" if root is not None else (f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else "default")
    raise InputError(f"dataset {name!r} not found: neither {base / spec.folder / spec.marker} nor "
                     f"{base / spec.marker} exists (data root from {how}; set ${DATA_DIR_ENV} or pass root)",
                     path=str(base))


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load a registered benchmark (``dataset_names()`` lists them) into a :class:`Dataset`."""
    _load_builtin()
    spec = DATASETS.get(name)
    ds = spec(dataset_dir(name, root))
    if ds.name != name:
        raise RuntimeError(f"dataset adapter {name!r} returned a dataset named {ds.name!r}")
    return ds
