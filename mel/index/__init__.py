"""Index artifacts: build (mel.index.build), load and query (mel.index.artifact), manifest, atomic writes.

Light to import: numpy only; faiss and pyarrow are imported when used.
"""

from mel.atomic import atomic_dir
from mel.index.artifact import IndexArtifact
from mel.index.build import assemble_index_dir, build_faiss
from mel.index.manifest import Manifest, check_compatible, read_manifest, write_manifest

__all__ = [
    "IndexArtifact",
    "Manifest",
    "assemble_index_dir",
    "atomic_dir",
    "build_faiss",
    "check_compatible",
    "read_manifest",
    "write_manifest",
]
