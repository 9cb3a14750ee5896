"""The one reader of the MELBench-style KB files that RichpediaMEL and WikiMEL share: ``qid2abs.json`` (QID ->
entity text) and ``qid2ne.json`` (QID -> entity name).

An entity's text becomes ``Entity.attributes`` when it round-trips exactly through :func:`mel.text.attributes_text`
("Occupation: politician. Languages: English."), else ``Entity.description``, so
``entity_text(e, "{name}. {attributes}")`` is always ``"<name>. <qid2abs text>"``. Every entity of ``qid2abs.json``
needs a name; errors name the file, the QID and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mel.datasets.base import count_images, expect_dict, index_images, parse_attribute_text, read_json, record_error
from mel.errors import InputError
from mel.kb.model import KB, LoadReport
from mel.types import Entity


def read_melbench_kb(root: Path, *, entity_images: bool) -> tuple[KB, dict[str, Any]]:
    """The KB in ``root`` and its counts. ``entity_images``: attach ``images/<QID>.*`` to their entities (and count
    them) -- RichpediaMEL's images are entity images, WikiMEL's are mention images."""
    abs_path, ne_path = root / "qid2abs.json", root / "qid2ne.json"
    texts = expect_dict(read_json(abs_path), abs_path, "QID -> entity text")
    names = expect_dict(read_json(ne_path), ne_path, "QID -> entity name")
    no_name = [q for q in texts if q not in names]
    if no_name:
        raise InputError(f"{len(no_name)} entities of {abs_path.name} have no name here, e.g. {no_name[0]!r}",
                         path=str(ne_path))
    images = index_images(root / "images", texts) if entity_images else {}
    entities: list[Entity] = []
    for qid, text in texts.items():
        if not isinstance(text, str):
            raise record_error(abs_path, qid, f"entity text must be a string, got {type(text).__name__}")
        name = names[qid]
        if not isinstance(name, str) or not name.strip():
            raise record_error(ne_path, qid, f"entity name must be a non-empty string, got {name!r}")
        attrs = parse_attribute_text(text)
        entities.append(Entity(id=qid, name=name, description="" if attrs is not None else text,
                               attributes=attrs or {}, images=tuple(images.get(qid, ()))))
    n_images = sum(map(len, images.values()))
    report = LoadReport(source=str(abs_path), entities=len(entities), images=n_images)
    stats: dict[str, Any] = {
        "entities": len(entities),
        "entities_text_as_attributes": sum(bool(e.attributes) for e in entities),
        "entities_text_as_description": sum(bool(e.description) for e in entities),
        "entities_text_empty": sum(not e.description and not e.attributes for e in entities),
        "names_not_in_kb": sum(q not in texts for q in names),
    }
    if entity_images:
        stats["entity_images"] = n_images
        stats["image_files_not_matching_an_entity"] = count_images(root / "images") - n_images
    return KB(entities, report=report), stats
