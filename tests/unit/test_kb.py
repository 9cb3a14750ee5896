"""KB files: JSONL / Parquet / directory reading, validation errors (file, line, field), writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.atomic import atomic_path
from mel.errors import InputError
from mel.kb import KB, LoadReport, iter_entities, read_kb, write_kb
from mel.types import Entity


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jl(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


@pytest.fixture()
def kb_dir(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "img" / "b.png").write_bytes(b"x")
    write_lines(tmp_path / "entities.jsonl", [
        jl({"id": "Q1", "name": "Ada Lovelace", "aliases": ["Ada", "Countess of Lovelace"],
            "description": "mathematician", "attributes": {"Occupation": "mathematician", "Born": 1815,
                                                          "Notable": True, "Height": 1.65},
            "images": ["img/a.jpg", "img/missing.jpg", "img/b.png"]}),
        "",
        "   ",
        jl({"id": "Q2", "name": "Alan Turing"}),
        jl({"id": "Q3", "name": "Grace Hopper", "aliases": None, "description": None, "attributes": None,
            "images": None}),
    ])
    return tmp_path


def test_read_jsonl_values_and_report(kb_dir: Path) -> None:
    kb = read_kb(kb_dir / "entities.jsonl")
    assert isinstance(kb, KB) and isinstance(kb.report, LoadReport)
    assert kb.ids == ["Q1", "Q2", "Q3"]
    ada = kb.get("Q1")
    assert ada.aliases == ("Ada", "Countess of Lovelace")
    assert ada.attributes == {"Occupation": "mathematician", "Born": "1815", "Notable": "true", "Height": "1.65"}
    # image paths become absolute; the missing one is left out of the entity but reported
    assert ada.images == (str((kb_dir / "img" / "a.jpg").resolve()), str((kb_dir / "img" / "b.png").resolve()))
    assert kb.report.missing_images == [str((kb_dir / "img" / "missing.jpg").resolve())]
    assert kb.report.entities == 3 and kb.report.images == 2
    assert "1 missing images" in kb.report.summary()
    assert kb.get("Q3") == Entity(id="Q3", name="Grace Hopper")
    assert "Q2" in kb and "Q9" not in kb and len(kb) == 3


def test_read_directory_and_absolute_images(kb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert read_kb(kb_dir).ids == ["Q1", "Q2", "Q3"]
    other = tmp_path_factory.mktemp("other")
    absolute = str((kb_dir / "img" / "a.jpg").resolve())
    write_lines(other / "kb.ndjson", [jl({"id": "X", "name": "x", "images": [absolute]})])
    assert read_kb(other / "kb.ndjson").get("X").images == (absolute,)


def test_check_images_off_keeps_all_paths(kb_dir: Path) -> None:
    kb = read_kb(kb_dir, check_images=False)
    assert len(kb.get("Q1").images) == 3 and kb.report.missing_images == []


def test_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "kb.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + jl({"id": "A", "name": "a"}).encode() + b"\n")
    assert read_kb(p).ids == ["A"]


@pytest.mark.parametrize(("line", "field", "words"), [
    ('{"id": "A", "name": "a"', None, "invalid JSON"),
    ("[1, 2]", None, "expected a JSON object, got array"),
    (jl({"name": "a"}), "id", "required field is missing"),
    (jl({"id": "", "name": "a"}), "id", "must not be empty"),
    (jl({"id": 7, "name": "a"}), "id", "must be a string, got number"),
    (jl({"id": "A", "name": "   "}), "name", "blank"),
    (jl({"id": "A"}), "name", "required field is missing"),
    (jl({"id": "A", "name": "a", "aliases": "b"}), "aliases", "must be a list of strings"),
    (jl({"id": "A", "name": "a", "aliases": ["b", 3]}), "aliases[1]", "must be a string"),
    (jl({"id": "A", "name": "a", "description": ["x"]}), "description", "must be a string or null"),
    (jl({"id": "A", "name": "a", "attributes": ["x"]}), "attributes", "must be an object"),
    (jl({"id": "A", "name": "a", "attributes": {"k": {"x": 1}}}), "attributes.k", "string or number"),
    (jl({"id": "A", "name": "a", "attributes": {"k": None}}), "attributes.k", "string or number"),
    (jl({"id": "A", "name": "a", "images": "x.jpg"}), "images", "must be a list of strings"),
])
def test_bad_record_names_file_line_field(tmp_path: Path, line: str, field: str | None, words: str) -> None:
    p = write_lines(tmp_path / "kb.jsonl", [jl({"id": "OK", "name": "ok"}), "", line])
    with pytest.raises(InputError) as exc:
        read_kb(p)
    msg = str(exc.value)
    assert f"{p}:3: " in msg, msg
    assert words in msg, msg
    if field is not None:
        assert f"field '{field}'" in msg, msg
    assert exc.value.line == 3 and exc.value.path == str(p)


def test_unknown_field_lists_allowed(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "kb.jsonl", [jl({"id": "A", "name": "a", "label": "x"})])
    with pytest.raises(InputError, match=r"kb.jsonl:1: unknown field\(s\) 'label'; allowed fields: id, name, "
                                         r"aliases, description, attributes, images"):
        read_kb(p)


def test_duplicate_id_names_first_line(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "kb.jsonl", [jl({"id": "A", "name": "a"}), jl({"id": "B", "name": "b"}),
                                            jl({"id": "A", "name": "again"})])
    with pytest.raises(InputError, match=r"kb.jsonl:3: field 'id': duplicate id 'A' \(first seen on line 1\)"):
        read_kb(p)


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    p = tmp_path / "kb.jsonl"
    p.write_bytes(jl({"id": "A", "name": "a"}).encode() + b"\n" + b'{"id": "\xff", "name": "b"}\n')
    with pytest.raises(InputError, match=r"kb.jsonl:2: not valid UTF-8"):
        read_kb(p)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="KB file not found"):
        read_kb(tmp_path / "nope.jsonl")
    (tmp_path / "kb.csv").write_text("id,name\n")
    with pytest.raises(InputError, match="unknown KB file type '.csv'"):
        read_kb(tmp_path / "kb.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="directory holds no KB file"):
        read_kb(tmp_path / "d")
    (tmp_path / "d" / "entities.jsonl").write_text("")
    (tmp_path / "d" / "entities.parquet").write_text("")
    with pytest.raises(InputError, match="both entities.jsonl and entities.parquet"):
        read_kb(tmp_path / "d")


def test_roundtrip_jsonl_and_parquet(kb_dir: Path) -> None:
    kb = read_kb(kb_dir)
    for name in ("copy.jsonl", "copy.parquet"):
        out = write_kb(kb, kb_dir / name)
        again = read_kb(out)
        assert again.entities == kb.entities, name
        assert again.content_hash() == kb.content_hash()
    # images under the output directory are stored relative to it
    rec = json.loads((kb_dir / "copy.jsonl").read_text().splitlines()[0])
    assert rec["images"] == ["img/a.jpg", "img/b.png"]
    assert "aliases" not in json.loads((kb_dir / "copy.jsonl").read_text().splitlines()[1])
    assert not [p for p in kb_dir.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_parquet_directory_and_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_kb([Entity(id="A", name="a", attributes={"k": "v"})], tmp_path / "entities.parquet")
    assert read_kb(tmp_path).get("A").attributes == {"k": "v"}

    pq.write_table(pa.table({"id": ["A", "B"], "name": ["a", ""]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad.parquet:2: field 'name': must not be empty"):
        read_kb(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"id": ["A"], "name": ["a"], "extra": [1]}), tmp_path / "extra.parquet")
    with pytest.raises(InputError, match=r"extra.parquet: unknown column\(s\) 'extra'; allowed columns: id, name"):
        read_kb(tmp_path / "extra.parquet")
    pq.write_table(pa.table({"id": ["A"]}), tmp_path / "noname.parquet")
    with pytest.raises(InputError, match="required column 'name' is missing"):
        read_kb(tmp_path / "noname.parquet")
    pq.write_table(pa.table({"id": ["A", "A"], "name": ["a", "b"]}), tmp_path / "dup.parquet")
    with pytest.raises(InputError, match=r"dup.parquet:2: field 'id': duplicate id 'A' \(first seen on row 1\)"):
        read_kb(tmp_path / "dup.parquet")
    # a struct column for attributes: null members are absent keys, not values
    pq.write_table(pa.table({"id": ["A", "B"], "name": ["a", "b"],
                             "attributes": [{"k": "v", "n": None}, {"k": None, "n": "2"}]}), tmp_path / "st.parquet")
    kb = read_kb(tmp_path / "st.parquet")
    assert kb.get("A").attributes == {"k": "v"} and kb.get("B").attributes == {"n": "2"}
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_kb(tmp_path / "junk.parquet")


def test_write_refuses_duplicates_and_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "kb.jsonl"
    write_kb([Entity(id="A", name="a")], out)
    before = out.read_bytes()
    with pytest.raises(InputError, match="duplicate entity id 'A'"):
        write_kb([Entity(id="A", name="a"), Entity(id="A", name="b")], out)
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash while writing")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb.jsonl"]


def test_kb_constructor_refuses_duplicates() -> None:
    with pytest.raises(InputError, match="duplicate entity id 'A'"):
        KB([Entity(id="A", name="a"), Entity(id="A", name="b")])


def test_iter_entities_streams(kb_dir: Path) -> None:
    report = LoadReport()
    it = iter_entities(kb_dir, report)
    first = next(it)
    assert first.id == "Q1" and report.entities == 1
    assert [e.id for e in it] == ["Q2", "Q3"] and report.entities == 3
