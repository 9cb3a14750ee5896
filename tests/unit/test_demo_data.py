"""The demo KB and mentions shipped in data/demo: they parse, refer to existing entities and images,
and the entity names are genuinely ambiguous (the point of the demo)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
KB_FILE = DEMO / "kb" / "entities.jsonl"
MENTIONS_FILE = DEMO / "mentions.jsonl"
KB_FIELDS = {"id", "name", "aliases", "description", "attributes", "images"}
MENTION_FIELDS = {"id", "surface", "context", "image", "attributes", "gold"}
MAX_IMAGE_SIDE = 256
MAX_DEMO_BYTES = 1024 * 1024


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"{path}:{n}: blank line"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            pytest.fail(f"{path}:{n}: not valid JSON: {e}")
        assert isinstance(rec, dict), f"{path}:{n}: a record must be a JSON object"
        records.append(rec)
    return records


@pytest.fixture(scope="module")
def entities() -> list[dict[str, Any]]:
    return _read_jsonl(KB_FILE)


@pytest.fixture(scope="module")
def mentions() -> list[dict[str, Any]]:
    return _read_jsonl(MENTIONS_FILE)


def _unique_ids(records: list[dict[str, Any]], what: str) -> None:
    seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        assert isinstance(rec.get("id"), str) and rec["id"].strip(), f"{what} line {i}: missing id"
        assert rec["id"] not in seen, f"{what} line {i}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})"
        seen[rec["id"]] = i


def test_entities_schema(entities: list[dict[str, Any]]) -> None:
    assert 40 <= len(entities) <= 60
    _unique_ids(entities, "entities.jsonl")
    for rec in entities:
        where = f"entity {rec['id']}"
        assert set(rec) <= KB_FIELDS, f"{where}: unknown fields {set(rec) - KB_FIELDS}"
        assert rec["id"].startswith("demo:"), where
        assert isinstance(rec["name"], str) and rec["name"].strip(), where
        assert isinstance(rec.get("aliases", []), list) and all(isinstance(a, str) and a for a in rec["aliases"])
        assert isinstance(rec.get("description"), str) and len(rec["description"]) >= 40, f"{where}: description"
        attrs = rec.get("attributes", {})
        assert isinstance(attrs, dict) and attrs, f"{where}: attributes must be a non-empty object"
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in attrs.items()), where


def test_mentions_schema(entities: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> None:
    assert 20 <= len(mentions) <= 30
    _unique_ids(mentions, "mentions.jsonl")
    kb_ids = {e["id"] for e in entities}
    nil = 0
    for rec in mentions:
        where = f"mention {rec['id']}"
        assert set(rec) <= MENTION_FIELDS, f"{where}: unknown fields {set(rec) - MENTION_FIELDS}"
        assert "gold" in rec, f"{where}: every demo mention has a gold answer (an id or null)"
        assert rec["gold"] is None or rec["gold"] in kb_ids, f"{where}: gold {rec['gold']!r} is not in the KB"
        nil += rec["gold"] is None
        assert rec["surface"].strip(), where
        assert rec["surface"].lower() in rec["context"].lower(), f"{where}: surface not found in its context"
    assert 2 <= nil <= 3, f"expected 2-3 NIL mentions, got {nil}"
    # The demo should exercise several senses of the same surface form.
    by_surface: dict[str, set[str | None]] = defaultdict(set)
    for rec in mentions:
        by_surface[rec["surface"].lower()].add(rec["gold"])
    assert sum(len(golds) >= 3 for golds in by_surface.values()) >= 4


def _image_paths(entities: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> list[Path]:
    paths = [KB_FILE.parent / p for e in entities for p in e.get("images", [])]
    paths += [MENTIONS_FILE.parent / m["image"] for m in mentions if m.get("image")]
    return paths


def test_referenced_images_exist_and_are_small(entities: list[dict[str, Any]],
                                                mentions: list[dict[str, Any]]) -> None:
    from PIL import Image

    paths = _image_paths(entities, mentions)
    assert len(paths) >= 10
    assert sum(1 for m in mentions if m.get("image")) >= 3, "some mentions should carry images"
    for p in paths:
        assert p.is_file(), f"referenced image missing: {p}"
        with Image.open(p) as img:
            assert img.format == "JPEG", p
            assert max(img.size) <= MAX_IMAGE_SIDE, f"{p}: {img.size} exceeds {MAX_IMAGE_SIDE} px"
    # every shipped image is referenced (no stray files), and the whole demo folder stays small
    shipped = {p.resolve() for p in DEMO.rglob("*.jpg")}
    assert shipped == {p.resolve() for p in paths}
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < MAX_DEMO_BYTES, f"data/demo is {total} bytes"


def test_image_paths_are_relative(entities: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> None:
    for e in entities:
        for p in e.get("images", []):
            assert not Path(p).is_absolute() and ".." not in Path(p).parts, f"{e['id']}: {p}"
    for m in mentions:
        if m.get("image"):
            assert not Path(m["image"]).is_absolute() and ".." not in Path(m["image"]).parts, m["id"]


def _name_keys(rec: dict[str, Any]) -> set[str]:
    names = [rec["name"], *rec.get("aliases", [])]
    keys = {n.lower() for n in names}
    keys |= {rec["name"].split()[0].strip(",.").lower()}
    return keys


def test_names_are_ambiguous(entities: list[dict[str, Any]]) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    for rec in entities:
        for key in _name_keys(rec):
            owners[key].add(rec["id"])
    shared = {k: v for k, v in owners.items() if len(v) >= 2}
    assert len(shared) >= 8, f"only {len(shared)} shared names: {sorted(shared)}"
    # the headline examples are there with several senses each
    for name in ("jaguar", "mercury", "python", "paris", "washington", "java", "amazon", "apple", "chelsea"):
        assert len(owners[name]) >= 2, f"{name!r} names only {owners[name]}"
    assert len(owners["jaguar"]) >= 4 and len(owners["mercury"]) >= 4


def test_every_gold_surface_is_ambiguous(entities: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> None:
    """Each mention's surface names at least two KB entities, so retrieval alone cannot trivially win."""
    owners: dict[str, set[str]] = defaultdict(set)
    for rec in entities:
        for key in _name_keys(rec):
            owners[key].add(rec["id"])
    for m in mentions:
        surface = m["surface"].lower()
        assert len(owners[surface]) >= 2, f"mention {m['id']}: surface {m['surface']!r} names {owners[surface]}"


def test_library_readers_accept_demo_files() -> None:
    """The project's own readers (when present) load the demo files with no missing images."""
    kb_mod = pytest.importorskip("mel.kb")
    kb = kb_mod.read_kb(KB_FILE)
    assert len(kb) == len(_read_jsonl(KB_FILE))
    assert not kb.report.missing_images, kb.report.missing_images
    assert all(Path(p).is_absolute() and Path(p).is_file() for e in kb for p in e.images)
    mentions_mod = pytest.importorskip("mel.mentions")
    mentions = mentions_mod.read_mentions(MENTIONS_FILE)
    assert not mentions.report.missing_images, mentions.report.missing_images
    assert all(m.gold is None or m.gold in kb for m in mentions)


def test_dev_mentions_for_nil_calibration(entities: list[dict[str, Any]], mentions: list[dict[str, Any]]) -> None:
    """dev.jsonl (what the demo calibrates its NIL threshold on) is disjoint from the mentions it then scores,
    refers to KB entities or NIL, and holds enough NIL mentions to choose a threshold."""
    dev = _read_jsonl(DEMO / "dev.jsonl")
    _unique_ids(dev, "dev.jsonl")
    kb_ids = {e["id"] for e in entities}
    assert not {d["id"] for d in dev} & {m["id"] for m in mentions}
    assert not {(d["surface"], d["context"]) for d in dev} & {(m["surface"], m["context"]) for m in mentions}
    for rec in dev:
        assert set(rec) <= MENTION_FIELDS, rec["id"]
        assert rec["gold"] is None or rec["gold"] in kb_ids, f"dev {rec['id']}: gold {rec['gold']!r} not in the KB"
    assert sum(d["gold"] is None for d in dev) >= 5 and sum(d["gold"] is not None for d in dev) >= 15
    from mel.datasets import load_dataset

    ds = load_dataset("demo", str(DEMO.parent))
    assert len(ds.splits["dev"]) == len(dev) and len(ds.splits["test"]) == len(mentions)


def test_readme_states_the_accuracy_the_demo_promises() -> None:
    from mel.entrypoints.demo import PROMISED

    readme = " ".join((DEMO.parents[1] / "README.md").read_text().split())
    assert f"**{PROMISED} correct**" in readme, PROMISED
