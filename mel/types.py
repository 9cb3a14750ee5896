"""Domain model: plain dataclasses shared by every stage, method and adapter.

NIL is an ordinary result: a :class:`LinkResult` whose ``entity_id`` is ``None``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NIL = None
"""The value of ``LinkResult.entity_id`` when a mention links to no KB entity."""


@dataclass(frozen=True)
class Entity:
    """One knowledge-base entity. ``id`` is the user's stable identifier (e.g. a Wikidata QID)."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    """Image paths, absolute after loading (the KB file stores them relative to itself)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        d["images"] = list(self.images)
        return d


@dataclass(frozen=True)
class Mention:
    """A mention to link: a surface form in its context, optionally with an image and attributes."""

    id: str
    surface: str
    context: str = ""
    image: str | None = None
    """Path to an image file, or ``None``."""
    attributes: dict[str, str] = field(default_factory=dict)
    gold: str | None = None
    """Gold entity id when known (evaluation data); ``None`` for unlabelled input."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """A KB entity proposed for a mention, with the score each stage gave it."""

    entity_id: str
    name: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    """Per-stage scores, e.g. ``{"text": 0.81, "image": 0.4, "retrieval": 0.85, "llm": -0.1}``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LinkResult:
    """The answer for one mention: an entity id, or NIL (``entity_id is None``)."""

    mention_id: str
    entity_id: str | None
    score: float
    candidates: list[Candidate] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    method: str = ""
    description: str | None = None
    """What an LLM said the mention refers to (the ``describe`` step), when the method ran it."""

    @property
    def is_nil(self) -> bool:
        return self.entity_id is None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinkResult:
        """The inverse of :meth:`to_dict` (e.g. an answer of ``POST /v1/link``)."""
        return cls(d["mention_id"], d.get("entity_id"), float(d["score"]),
                   [Candidate(c["entity_id"], c["name"], float(c["score"]), dict(c.get("scores") or {}))
                    for c in d.get("candidates") or []],
                   dict(d.get("timings_ms") or {}), d.get("method") or "", d.get("description"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mention_id": self.mention_id,
            "entity_id": self.entity_id,
            "nil": self.is_nil,
            "score": self.score,
            "method": self.method,
            "candidates": [c.to_dict() for c in self.candidates],
            "timings_ms": dict(self.timings_ms),
            **({"description": self.description} if self.description is not None else {}),
        }
