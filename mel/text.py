"""Text rendering of entities and mentions for embedding and prompting (one place, used everywhere)."""

from __future__ import annotations

from mel.types import Entity, Mention


def attributes_text(attributes: dict[str, str]) -> str:
    return " ".join(f"{k}: {v}." if not str(v).endswith(".") else f"{k}: {v}" for k, v in attributes.items())


def entity_text(entity: Entity, template: str, summary: str | None = None) -> str:
    """``template`` rendered for ``entity``, whitespace collapsed. Fields: {name} {aliases} {description}
    {attributes} (the description when there are none) and {summary}: ``summary`` (an LLM summary, see
    mel.augment.entity), else the description, else the attributes text."""
    attributes = attributes_text(entity.attributes)
    return " ".join(template.format(
        name=entity.name,
        aliases=", ".join(entity.aliases),
        description=entity.description,
        attributes=attributes or entity.description,
        summary=summary or entity.description or attributes,
    ).split())


def mention_text(mention: Mention, template: str) -> str:
    return " ".join(template.format(surface=mention.surface, context=mention.context).split())
