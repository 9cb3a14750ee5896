"""Dataset adapters: tiny synthetic copies of each benchmark layout, plus the real data when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.datasets import Dataset, dataset_dir, dataset_names, load_dataset, register_dataset, resolve_data_root
from mel.datasets.base import parse_attribute_text, stable_fraction
from mel.errors import ConfigError, InputError
from mel.kb import read_kb
from mel.mentions import read_mentions
from mel.text import entity_text


def dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def rp_record(qid: str, surface: str, sentence: str = "A sentence.") -> dict[str, str]:
    return {"id": qid, "sentence": sentence, "mentions": surface, "entities": "gold name", "answer": qid}


@pytest.fixture()
def richpedia_root(tmp_path: Path) -> Path:
    d = tmp_path / "richpedia-mel"
    qids = [f"Q{i}" for i in range(1, 41)]
    dump(d / "qid2abs.json", {q: "Occupation: politician, writer. Languages: English." for q in qids[:-2]}
         | {"Q39": "", "Q40": "Death: 1943, Washington D.C.."})
    dump(d / "qid2ne.json", {q: f"Person {q}" for q in qids})
    dump(d / "train.json", {q: rp_record(q, f"P{q}") for q in qids[:30]})
    dump(d / "test.json", {q: rp_record(q, f"P{q}") for q in qids[30:]})
    (d / "images").mkdir()
    (d / "images" / "Q1.jpg").write_bytes(b"x")
    (d / "images" / "Q999.jpg").write_bytes(b"x")
    return tmp_path


@pytest.fixture()
def wikimel_root(tmp_path: Path) -> Path:
    d = tmp_path / "wikimel"
    dump(d / "qid2abs.json", {"Q1": "Sex: male.", "Q2": "Sex: female. Occupation: actor."})
    dump(d / "qid2ne.json", {"Q1": "One", "Q2": "Two"})
    dump(d / "Wikidata-MEL.json", {
        "10": {"id": "10", "sentence": "One and Two", "mentions": ["One", "Two"], "entities": ["One", "Two"],
               "answer": ["Q1", "Q2"]},
        "11": {"id": "11", "sentence": "Stranger", "mentions": ["Stranger"], "entities": ["S"], "answer": ["Q77"]},
        "12": {"id": "12", "sentence": "Two again", "mentions": ["Two"], "entities": ["Two"], "answer": ["Q2"]},
        "13": {"id": "13", "sentence": "in no split", "mentions": ["One"], "entities": ["One"], "answer": ["Q1"]},
    })
    dump(d / "splits.json", {"train": ["10", "99"], "dev": ["12"], "test": ["11", "98", "97"]})
    (d / "images").mkdir()
    (d / "images" / "10.jpg").write_bytes(b"x")
    return tmp_path


def test_registry_names_and_unknown() -> None:
    assert {"richpedia-mel", "wikimel"} <= set(dataset_names())
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; known: .*richpedia-mel"):
        load_dataset("nope", Path("."))


def test_richpedia_adapter(richpedia_root: Path) -> None:
    ds = load_dataset("richpedia-mel", richpedia_root)
    assert isinstance(ds, Dataset) and ds.name == "richpedia-mel" and len(ds.kb) == 40
    e1 = ds.kb.get("Q1")
    assert e1.attributes == {"Occupation": "politician, writer", "Languages": "English"} and e1.description == ""
    assert entity_text(e1, "{name}. {attributes}") == "Person Q1. Occupation: politician, writer. Languages: English."
    assert e1.images == (str((richpedia_root / "richpedia-mel" / "images" / "Q1.jpg").resolve()),)
    # text that does not round-trip through attributes stays a description, rendering identically
    e40 = ds.kb.get("Q40")
    assert e40.attributes == {} and entity_text(e40, "{name}. {attributes}") == (
        "Person Q40. Death: 1943, Washington D.C..")
    assert entity_text(ds.kb.get("Q39"), "{name}. {attributes}") == "Person Q39."
    # dev carved from train deterministically, disjoint, nothing lost
    train, dev, test = ds.splits["train"], ds.splits["dev"], ds.splits["test"]
    assert len(train) + len(dev) == 30 and len(test) == 10
    assert not {m.id for m in train} & {m.id for m in dev}
    assert {m.id for m in dev} == {f"Q{i}" for i in range(1, 31) if stable_fraction(f"Q{i}", "richpedia-mel/dev") < 0.1}
    assert load_dataset("richpedia-mel", richpedia_root).splits["dev"] == dev
    m = test[0]
    assert (m.id, m.surface, m.context, m.gold) == ("Q31", "PQ31", "A sentence.", "Q31")
    assert ds.stats["entity_images"] == 1 and ds.stats["image_files_not_matching_an_entity"] == 1
    assert ds.stats["splits"]["test"]["gold_not_in_kb"] == 0 and ds.stats["mentions"] == 40


def test_richpedia_bad_record_is_named(richpedia_root: Path) -> None:
    d = richpedia_root / "richpedia-mel"
    dump(d / "test.json", {"Q31": {"id": "Q31", "sentence": "s", "answer": "Q31"}})
    with pytest.raises(InputError, match=r"test.json: field 'mentions': record 'Q31': required field is missing"):
        load_dataset("richpedia-mel", richpedia_root)
    dump(d / "test.json", {"Q31": rp_record("Q32", "x")})
    with pytest.raises(InputError, match=r"record 'Q31': id 'Q32' differs from the record's key"):
        load_dataset("richpedia-mel", richpedia_root)
    dump(d / "test.json", {"Q1": rp_record("Q1", "x")})
    with pytest.raises(InputError, match=r"in both train.json and test.json"):
        load_dataset("richpedia-mel", richpedia_root)
    (d / "test.json").write_text("{not json")
    with pytest.raises(InputError, match=r"test.json:1: invalid JSON"):
        load_dataset("richpedia-mel", richpedia_root)


def test_wikimel_adapter(wikimel_root: Path) -> None:
    ds = load_dataset("wikimel", wikimel_root)
    assert len(ds.kb) == 2
    train, dev, test = ds.splits["train"], ds.splits["dev"], ds.splits["test"]
    assert [m.id for m in train] == ["10-0", "10-1"] and [m.gold for m in train] == ["Q1", "Q2"]
    assert train[1].surface == "Two" and train[1].context == "One and Two"
    assert train[0].image == train[1].image == str((wikimel_root / "wikimel" / "images" / "10.jpg").resolve())
    assert [m.id for m in dev] == ["12-0"] and dev[0].image is None
    assert [m.id for m in test] == ["11-0"] and test[0].gold == "Q77"  # kept although not in the KB
    s = ds.stats["splits"]
    assert (s["train"]["records"], s["train"]["records_found"], s["train"]["records_missing"]) == (2, 1, 1)
    assert s["test"]["records_missing"] == 2 and s["test"]["records_missing_examples"] == ["98", "97"]
    assert s["test"]["gold_not_in_kb"] == 1 and ds.stats["gold_not_in_kb"] == 1
    assert ds.stats["records_missing"] == 3 and ds.stats["records_in_no_split"] == 1
    assert "3 records missing" not in ds.summary() and "2 records missing" in ds.summary()


def test_wikimel_bad_inputs(wikimel_root: Path) -> None:
    d = wikimel_root / "wikimel"
    records = json.loads((d / "Wikidata-MEL.json").read_text())
    records["10"]["answer"] = ["Q1"]
    dump(d / "Wikidata-MEL.json", records)
    with pytest.raises(InputError, match=r"Wikidata-MEL.json: record '10': parallel lists differ in length"):
        load_dataset("wikimel", wikimel_root)
    dump(d / "splits.json", {"train": ["12"], "test": ["12"]})
    with pytest.raises(InputError, match=r"splits.json: field 'test': record id '12' is listed in split 'train'"):
        load_dataset("wikimel", wikimel_root)


def test_root_resolution(wikimel_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEL_DATA_DIR", str(wikimel_root))
    assert resolve_data_root() == wikimel_root and resolve_data_root("/x") == Path("/x")
    assert dataset_dir("wikimel") == wikimel_root / "wikimel"
    assert dataset_dir("wikimel", wikimel_root / "wikimel") == wikimel_root / "wikimel"  # the folder itself
    assert len(load_dataset("wikimel").kb) == 2
    with pytest.raises(InputError, match=r"dataset 'richpedia-mel' not found: .*set \$MEL_DATA_DIR"):
        load_dataset("richpedia-mel")
    monkeypatch.delenv("MEL_DATA_DIR")
    assert resolve_data_root() == Path(__file__).resolve().parents[3] / "shared" / "data"


def test_export_reads_back(wikimel_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("wikimel", wikimel_root)
    paths = ds.write(tmp_path / "export")
    assert read_kb(paths["kb"]).entities == ds.kb.entities
    assert list(read_mentions(paths["test"])) == ds.splits["test"]


def test_register_new_adapter(tmp_path: Path) -> None:
    from mel.datasets.registry import DATASETS
    from mel.kb import KB

    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "marker.txt").write_text("")

    @register_dataset("toy-test-only", folder="toy", marker="marker.txt")
    def load_toy(root: Path) -> Dataset:
        return Dataset(name="toy-test-only", kb=KB([]), splits={"test": []}, stats={"root": str(root)})

    try:
        assert load_dataset("toy-test-only", tmp_path).stats["root"] == str(tmp_path / "toy")
    finally:
        DATASETS._items.pop("toy-test-only")


@pytest.mark.parametrize(("text", "attrs"), [
    ("Occupation: politician, military officer. Languages: English, English.",
     {"Occupation": "politician, military officer", "Languages": "English, English"}),
    ("Birth: 1732-02-22, Westmoreland County. Alma mater: St. John's College.",
     {"Birth": "1732-02-22, Westmoreland County", "Alma mater": "St. John's College"}),
    ("  Sex:   male.\n", {"Sex": "male"}),
    ("", {}),
    ("Occupation: .", None),
    ("Death: 1943, Washington D.C..", None),
    ("A free text without statements.", None),
    ("Sex: male. Sex: female.", None),
])
def test_parse_attribute_text(text: str, attrs: dict[str, str] | None) -> None:
    assert parse_attribute_text(text) == attrs


# ----------------------------------------------------------------------------- the real benchmark data
@pytest.fixture(scope="module")
def real_root() -> Path:
    root = resolve_data_root()
    if not (root / "richpedia-mel" / "qid2abs.json").is_file() or not (root / "wikimel" / "splits.json").is_file():
        pytest.skip(f"benchmark data not found under {root} (set MEL_DATA_DIR or place ../shared/data)")
    return root


def test_real_richpedia(real_root: Path) -> None:
    ds = load_dataset("richpedia-mel", real_root)
    assert len(ds.kb) == 17_805
    assert len(ds.splits["train"]) + len(ds.splits["dev"]) == 14_244 and len(ds.splits["test"]) == 3_561
    assert 0.08 < len(ds.splits["dev"]) / 14_244 < 0.12
    assert ds.stats["gold_not_in_kb"] == 0 and ds.stats["entity_images"] == 9
    texts = json.loads((real_root / "richpedia-mel" / "qid2abs.json").read_text())
    bad = [e.id for e in ds.kb
           if entity_text(e, "{name}. {attributes}") != " ".join(f"{e.name}. {texts[e.id]}".split())]
    assert bad == []


def test_real_wikimel(real_root: Path) -> None:
    ds = load_dataset("wikimel", real_root)
    assert len(ds.kb) == 18_880
    assert len(ds.splits["test"]) == 5_131
    s = ds.stats["splits"]
    assert (s["train"]["records"], s["dev"]["records"], s["test"]["records"]) == (17_091, 2_443, 4_883)
    for split in ("train", "dev", "test"):
        assert 0 < s[split]["records_missing"] < 0.15 * s[split]["records"]
        assert s[split]["records_found"] + s[split]["records_missing"] == s[split]["records"]
    assert ds.stats["mentions"] == sum(len(v) for v in ds.splits.values())
    assert all(m.id.rsplit("-", 1)[1].isdigit() for m in ds.splits["test"])
