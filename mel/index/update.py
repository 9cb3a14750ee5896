"""Incremental index updates, and the versioned layout that lets serving switch versions.

``mel index --update DELTA --from OLD`` builds a new index version from an old one and a KB delta
(:mod:`mel.kb.delta`): the old entity table (``entities.parquet`` holds full records) plus the delta gives the
new KB; every entity whose embedded text is unchanged keeps its old vector, bit for bit (:class:`ParentIndex`
hands them to the builder), and only new or changed texts (and new or changed images) are embedded. The
builder is the one of a full build (``pipelines/index.py``), so the faiss index, files and checks are the same.
Entity ids are stable across versions; positions may be renumbered, so anything keyed by position must come
from the new directory.

Versioned layout (optional; any directory works as ``--from`` / ``--out``)::

    <root>/v0001/     complete index directories (each appears atomically, manifest last)
    <root>/v0002/
    <root>/CURRENT    the name of the version to serve, replaced atomically

Writing an index into a ``vNNNN`` directory points ``CURRENT`` at it once it is complete. A server holding
``<root>`` calls :func:`latest_version` (or :func:`resolve_index_dir`) and loads the directory it returns; the
old version stays on disk and keeps answering until the new one is loaded.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from mel.atomic import write_bytes_atomic
from mel.errors import ArtifactMismatch, InputError
from mel.index.build import ENTITIES, IMAGE, SHARDS, TEXT_VECTORS, read_shards
from mel.index.manifest import MANIFEST, Manifest, read_manifest
from mel.kb.model import KB, LoadReport
from mel.types import Entity

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
_VERSION_NAME = re.compile(r"^v(\d{4,})$")
FULL_BUILD_HINT = "run a full build with `mel index --kb ...` instead"


# ----------------------------------------------------------------------------- versioned layout
def version_name(version: int) -> str:
    """``v0007`` for 7."""
    if version < 1:
        raise ValueError(f"index versions start at 1, got {version}")
    return f"v{version:04d}"


def is_version_dir(path: str | Path) -> bool:
    return _VERSION_NAME.match(Path(path).name) is not None


def _complete(d: Path) -> bool:
    return (d / MANIFEST).is_file()


def current_version(root: str | Path) -> Path | None:
    """The directory ``<root>/CURRENT`` names (checked to be a complete index), or None without CURRENT."""
    root = Path(root)
    p = root / CURRENT
    if not p.is_file():
        return None
    name = p.read_text(encoding="utf-8").strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InputError(f"must hold the name of an index directory beside it, got {name!r}", path=str(p))
    d = root / name
    if not _complete(d):
        raise InputError(f"names {name!r}, which is not a complete index directory", path=str(p))
    return d


def latest_version(root: str | Path) -> Path:
    """The index directory to serve under ``root``: the one ``CURRENT`` names, else the highest complete
    ``vNNNN``. InputError when there is none. Cheap (reads at most a few small files): call it on every
    reload."""
    root = Path(root)
    cur = current_version(root)
    if cur is not None:
        return cur
    versions = sorted((int(m.group(1)), d) for d in (root.iterdir() if root.is_dir() else [])
                      if (m := _VERSION_NAME.match(d.name)) and _complete(d))
    if not versions:
        raise InputError(f"no {CURRENT} file and no complete vNNNN index directory; build one with "
                         f"`mel index --out {root / version_name(1)}`", path=str(root))
    return versions[-1][1]


def resolve_index_dir(path: str | Path) -> Path:
    """``path`` itself when it is an index directory (has a manifest), else the version its ``CURRENT`` (or
    highest ``vNNNN``) names. Lets every command take either an index directory or a versioned root."""
    p = Path(path)
    if _complete(p):
        return p
    if p.is_dir() and ((p / CURRENT).is_file() or any(is_version_dir(d) for d in p.iterdir())):
        return latest_version(p)
    read_manifest(p)  # raises the loader's error (missing directory, unfinished build)
    return p


def set_current(root: str | Path, name: str) -> Path:
    """Point ``<root>/CURRENT`` at the complete index directory ``<root>/<name>`` (atomic replace)."""
    root = Path(root)
    if not _complete(root / name):
        raise InputError(f"{name!r} is not a complete index directory", path=str(root))
    p = root / CURRENT
    write_bytes_atomic(p, f"{name}\n".encode())
    return p


def _number(path: Path) -> int:
    m = _VERSION_NAME.match(path.name)
    return int(m.group(1)) if m else -1


def publish(out_dir: str | Path) -> Path | None:
    """After a build: when ``out_dir`` is a ``vNNNN`` directory, point its root's CURRENT at it -- unless CURRENT
    already names a higher version (rebuilding an old version never moves serving back; use
    :func:`set_current` for a rollback)."""
    out = Path(out_dir)
    if not is_version_dir(out):
        return None
    try:
        cur = current_version(out.parent)
    except InputError:
        cur = None  # CURRENT names nothing usable: replace it
    if cur is not None and _number(cur) > _number(out):
        log.warning("%s stays at %s (a higher version than %s)", out.parent / CURRENT, cur.name, out.name)
        return None
    p = set_current(out.parent, out.name)
    log.info("%s now points at %s", p, out.name)
    return p


def default_update_out(parent_dir: str | Path, version: int) -> Path:
    """Where an update writes when no ``--out`` is given: ``<root>/vNNNN`` when the parent is a version
    directory, else ``<parent name>-vNNNN`` beside it. An existing directory is refused (never overwritten)."""
    parent = Path(parent_dir)
    name = version_name(version) if is_version_dir(parent) else f"{parent.name}-{version_name(version)}"
    out = parent.with_name(name)
    if out.exists():
        raise InputError(f"the default output {out} already exists; give --out explicitly (an existing "
                         "directory is replaced atomically)", path=str(out))
    return out


# ----------------------------------------------------------------------------- the parent index
def _entities_from_table(columns: dict[str, list]) -> list[Entity]:
    return [Entity(id=i, name=n, aliases=tuple(a), description=d, attributes=json.loads(at), images=tuple(im))
            for i, n, a, d, at, im in zip(columns["id"], columns["name"], columns["aliases"], columns["description"],
                                          columns["attributes"], columns["images"], strict=True)]


class ParentIndex:
    """An existing index version as the base of an update: its KB (from ``entities.parquet``), and its
    vectors, handed out only where they are still valid."""

    def __init__(self, index_dir: str | Path) -> None:
        import pyarrow.parquet as pq

        self.dir = resolve_index_dir(index_dir)
        self.manifest: Manifest = read_manifest(self.dir)
        self._check_sizes([ENTITIES, TEXT_VECTORS])
        n = self.manifest.counts["entities"]
        table = pq.read_table(self.dir / ENTITIES)
        if table.num_rows != n:
            raise ArtifactMismatch(f"index {self.dir}: {ENTITIES} has {table.num_rows} rows, manifest counts {n}")
        self._cols = {c: table.column(c).to_pylist()
                      for c in ("id", "name", "aliases", "description", "attributes", "images", "text")}
        self._row = {eid: i for i, eid in enumerate(self._cols["id"])}
        self._text = np.load(self.dir / TEXT_VECTORS, mmap_mode="r", allow_pickle=False)
        if self._text.shape != (n, self.manifest.dim) or self._text.dtype != np.float32:
            raise ArtifactMismatch(f"index {self.dir}: {TEXT_VECTORS} has shape {self._text.shape}, expected "
                                   f"({n}, {self.manifest.dim}) float32")
        self._images: dict[tuple[str, str], tuple[int, str, bool]] | None = None
        self._image_vectors: np.ndarray | None = None

    def _check_sizes(self, names: list[str]) -> None:
        for name in names:
            f = self.dir / name
            size = self.manifest.files.get(name)
            if not f.is_file() or (size is not None and f.stat().st_size != size):
                raise ArtifactMismatch(f"index {self.dir}: {name} is missing or damaged (size differs from the "
                                       f"manifest); {FULL_BUILD_HINT}")

    def kb(self) -> KB:
        """The KB this version was built from (image paths absolute, as they were read then)."""
        ents = _entities_from_table(self._cols)
        return KB(ents, report=LoadReport(source=str(self.dir / ENTITIES), entities=len(ents),
                                          images=sum(len(e.images) for e in ents)))

    def check_encoders(self, *, encoder_id: str, dim: int, entity_template: str,
                       image_encoder_id: str | None) -> None:
        """Refuse an update whose configured encoders or entity template differ from this version's: its
        vectors could not be mixed with new ones."""
        m = self.manifest
        checks = [("encoder_id", "text encoder", m.encoder_id, encoder_id),
                  ("dim", "text vector dimension", m.dim, dim),
                  ("entity_template", "entity template", m.entity_template, entity_template),
                  ("image_encoder_id", "image encoder", m.image_encoder_id, image_encoder_id)]
        for name, what, have, want in checks:
            if have != want:
                raise ArtifactMismatch(
                    f"cannot update index {self.dir} incrementally: its {what} (manifest field '{name}') is "
                    f"{have!r}, the configuration uses {want!r}; vectors of both cannot share an index; "
                    f"{FULL_BUILD_HINT}")

    def lineage(self, delta_source: str) -> tuple[int, dict[str, Any]]:
        """(version of the update, ``parent`` record for its manifest)."""
        m = self.manifest
        return m.version + 1, {"dir": self.dir.name, "version": m.version, "kb_hash": m.kb_hash,
                               "delta": str(delta_source)}

    def text_vector(self, entity_id: str, text: str) -> np.ndarray | None:
        """This version's vector of ``entity_id`` when its embedded text is still ``text``, else None."""
        i = self._row.get(entity_id)
        if i is None or self._cols["text"][i] != text:
            return None
        return np.asarray(self._text[i], dtype=np.float32)

    def image_vector(self, entity_id: str, path: str, stamp: str) -> tuple[np.ndarray, bool] | None:
        """(vector, readable) of one entity image when this version embedded the same file (same path, size and
        mtime), else None. An image this version could not read is handed back as unreadable."""
        if self._images is None:
            self._load_images()
        assert self._images is not None and self._image_vectors is not None
        hit = self._images.get((entity_id, path))
        if hit is None or hit[1] != stamp or stamp == "missing":
            return None
        return self._image_vectors[hit[0]], hit[2]

    def _load_images(self) -> None:
        self._images = {}
        self._image_vectors = np.zeros((0, self.manifest.image_dim or 0), np.float32)
        if self.manifest.image_encoder_id is None:
            return
        from mel.index.build import shard_vectors

        t = read_shards(self.dir / SHARDS, IMAGE, encoder_id=self.manifest.image_encoder_id, allow_empty=True)
        if t is None or "stamp" not in t.column_names:  # no images, or shards from before stamps: embed again
            return
        ok = t.column("ok").to_pylist() if "ok" in t.column_names else [True] * t.num_rows
        for r, (eid, path, stamp) in enumerate(zip(t.column("entity_id").to_pylist(), t.column("image").to_pylist(),
                                                   t.column("stamp").to_pylist(), strict=True)):
            self._images[(eid, path)] = (r, stamp, bool(ok[r]))
        self._image_vectors = shard_vectors(t)
