"""Mention JSONL files: reading, validation errors (file, line, field), missing images, writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.errors import InputError
from mel.mentions import MentionList, read_mentions, write_mentions
from mel.types import Mention


def jl(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def mention_file(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "m1.jpg").write_bytes(b"x")
    return write_lines(tmp_path / "mentions.jsonl", [
        jl({"id": "m1", "surface": "Ada", "context": "Ada wrote the first program.", "image": "imgs/m1.jpg",
            "attributes": {"year": 1843}, "gold": "Q1"}),
        "",
        jl({"id": "m2", "surface": "Zork", "gold": None}),
        jl({"id": "m3", "surface": "Turing", "image": "imgs/gone.jpg"}),
        jl({"id": "m4", "surface": "\n", "context": "caption without a usable surface", "gold": "Q2"}),
    ])


def test_read_mentions(mention_file: Path) -> None:
    ms = read_mentions(mention_file)
    assert isinstance(ms, MentionList) and isinstance(ms, list)
    assert [m.id for m in ms] == ["m1", "m2", "m3", "m4"]
    m1 = ms[0]
    assert m1.image == str((mention_file.parent / "imgs" / "m1.jpg").resolve())
    assert m1.attributes == {"year": "1843"} and m1.gold == "Q1" and m1.context.startswith("Ada wrote")
    assert ms[1].gold is None and ms[1].context == "" and ms[1].image is None
    # missing image: reported, not fatal; the mention stays, without an image
    assert ms[2].image is None
    assert ms.report.missing_images == [str((mention_file.parent / "imgs" / "gone.jpg").resolve())]
    assert ms.report.mentions == 4 and ms.report.images == 1
    assert ms.report.with_gold == 3 and ms.report.gold_nil == 1
    assert ms.report.blank_surfaces == ["m4"]
    assert "1 missing images" in ms.report.summary()


@pytest.mark.parametrize(("line", "field", "words"), [
    ("not json", None, "invalid JSON"),
    ('"a string"', None, "expected a JSON object, got string"),
    (jl({"surface": "x"}), "id", "required field is missing"),
    (jl({"id": "a"}), "surface", "required field is missing"),
    (jl({"id": "a", "surface": ""}), "surface", "must not be empty"),
    (jl({"id": "a", "surface": 3}), "surface", "must be a string"),
    (jl({"id": "a", "surface": "x", "gold": 5}), "gold", "must be a string or null"),
    (jl({"id": "a", "surface": "x", "gold": ""}), "gold", "non-empty entity id or null"),
    (jl({"id": "a", "surface": "x", "image": ["a.jpg"]}), "image", "must be a string or null"),
    (jl({"id": "a", "surface": "x", "image": " "}), "image", "non-empty path"),
    (jl({"id": "a", "surface": "x", "context": {}}), "context", "must be a string or null"),
    (jl({"id": "a", "surface": "x", "attributes": {"k": [1]}}), "attributes.k", "string or number"),
    (jl({"id": "ok", "surface": "again"}), "id", "duplicate id 'ok' (first seen on line 1)"),
])
def test_bad_mention_names_file_line_field(tmp_path: Path, line: str, field: str | None, words: str) -> None:
    p = write_lines(tmp_path / "m.jsonl", [jl({"id": "ok", "surface": "fine"}), line])
    with pytest.raises(InputError) as exc:
        read_mentions(p)
    msg = str(exc.value)
    assert f"{p}:2: " in msg and words in msg, msg
    if field is not None:
        assert f"field '{field}'" in msg, msg


def test_unknown_field_lists_allowed(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "m.jsonl", [jl({"id": "a", "surface": "x", "label": "Q1"})])
    with pytest.raises(InputError, match=r"m.jsonl:1: unknown field\(s\) 'label'; allowed fields: id, surface, "
                                         r"context, image, attributes, gold"):
        read_mentions(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.jsonl: file not found"):
        read_mentions(tmp_path / "nope.jsonl")


def test_roundtrip(mention_file: Path, tmp_path: Path) -> None:
    ms = read_mentions(mention_file)
    out = write_mentions(ms, mention_file.parent / "copy.jsonl")
    again = read_mentions(out)
    assert list(again) == list(ms)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["image"] == "imgs/m1.jpg"  # relative to the written file
    assert lines[1]["gold"] is None and "gold" in lines[2]  # gold always written; null = NIL expected
    no_gold = write_mentions(ms, tmp_path / "sub" / "nogold.jsonl", include_gold=False)
    assert all("gold" not in json.loads(x) for x in no_gold.read_text().splitlines())
    # written outside the images' directory: absolute paths are kept
    assert json.loads(no_gold.read_text().splitlines()[0])["image"] == ms[0].image


def test_write_refuses_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="duplicate id 'a'"):
        write_mentions([Mention(id="a", surface="x"), Mention(id="a", surface="y")], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()
