"""Text rendering of entities and mentions for embedding and prompting (one place, used everywhere)."""

from __future__ import annotations

from mel.types import Entity, Mention


def attributes_text(attributes: dict[str, str]) -> str:
    return " ".join(f"{k}: {v}." if not str(v).endswith(".") else f"{k}: {v}" for k, v in attributes.items())


def entity_text(entity: Entity, template: str) -> str:
    return " ".join(template.format(
        name=entity.name,
        aliases=", ".join(entity.aliases),
        description=entity.description,
        attributes=attributes_text(entity.attributes) or entity.description,
    ).split())


def mention_text(mention: Mention, template: str) -> str:
    return " ".join(template.format(surface=mention.surface, context=mention.context).split())
