"""The in-memory KB: entities in file order, a content hash, and the load report."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from mel.errors import InputError
from mel.types import Entity


@dataclass
class LoadReport:
    """What loading found: counts, and problems that were not fatal (e.g. missing images)."""

    source: str = ""
    entities: int = 0
    images: int = 0
    missing_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.source}: {self.entities} entities, {self.images} images"
        if self.missing_images:
            s += f", {len(self.missing_images)} missing images (e.g. {self.missing_images[0]})"
        return s


@dataclass
class KB:
    entities: list[Entity]
    report: LoadReport = field(default_factory=LoadReport)
    _by_id: dict[str, Entity] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {}
        for e in self.entities:
            if e.id in self._by_id:
                raise InputError(f"KB: duplicate entity id {e.id!r}", field="id")
            self._by_id[e.id] = e

    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._by_id

    def get(self, entity_id: str) -> Entity:
        return self._by_id[entity_id]

    @property
    def ids(self) -> list[str]:
        """Entity ids in file order."""
        return [e.id for e in self.entities]

    def content_hash(self) -> str:
        """Order-independent hash of entity content (ids, names, texts, attributes, image paths)."""
        h = hashlib.sha256()
        for e in sorted(self.entities, key=lambda e: e.id):
            h.update(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]
