"""The knowledge base: the in-memory :class:`KB`, and reading/writing KB files (docs/kb-format.md)."""

from mel.kb.model import KB, LoadReport
from mel.kb.reader import iter_entities, read_kb, write_kb

__all__ = ["KB", "LoadReport", "iter_entities", "read_kb", "write_kb"]
