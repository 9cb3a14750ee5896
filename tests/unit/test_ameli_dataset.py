"""The AMELI adapter on a sample written in the released format (products.json, review arrays, PNG images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mel.datasets import dataset_dir, dataset_names, load_dataset
from mel.datasets.ameli import AmeliDataset
from mel.errors import InputError
from mel.kb import read_kb
from mel.mentions import read_mentions
from tests.fixtures.ameli_sample import write_ameli_sample


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    write_ameli_sample(tmp_path)
    return tmp_path


def test_entities_map_products_with_attributes_and_images(sample: Path) -> None:
    assert "ameli" in dataset_names()
    assert dataset_dir("ameli", sample) == sample / "ameli"
    ds = load_dataset("ameli", sample)
    assert isinstance(ds, AmeliDataset) and ds.name == "ameli" and len(ds.kb) == 6
    p1 = ds.kb.get("101")  # integer ids become strings
    assert p1.name == "Samsung - Galaxy S21 5G 128GB - Phantom Black"
    assert p1.description == "Samsung Galaxy S21 5G smartphone with 128GB of storage."
    # Spec flattened over sections, first value of a repeated key kept, category added
    assert p1.attributes == {"Brand": "Samsung", "Color": "Phantom Black", "Storage": "128 gigabytes",
                             "Model Number": "SM-G991U", "Category": "Cell Phones"}
    img_dir = sample / "ameli" / "product_images"
    assert p1.images == (str((img_dir / "101_a.png").resolve()), str((img_dir / "101_b.png").resolve()))
    p3 = ds.kb.get("103")  # the missing image file is left out and counted
    assert p3.images == (str((img_dir / "103_a.png").resolve()),)
    assert ds.stats["entity_images_missing"] == 1 and ds.stats["entity_images"] == 7
    assert ds.kb.get("106").description == ""  # overview_section null
    assert ds.kb.get("106").attributes["Noise Cancelling"] == "Yes"


def test_mentions_keep_every_review_and_all_images(sample: Path) -> None:
    ds = load_dataset("ameli", sample)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "dev": 2, "test": 4}
    m1 = ds.splits["train"][0]
    assert (m1.id, m1.surface, m1.gold) == ("1", "Galaxy S21", "101")
    assert m1.context == "Sleek phone. The phantom black Galaxy S21 looks great and 128 gigabytes is plenty."
    rev = sample / "ameli" / "cleaned_review_images"
    assert m1.image == str((rev / "r1_a.png").resolve())
    assert ds.mention_images["1"] == (str((rev / "r1_a.png").resolve()), str((rev / "r1_b.png").resolve()))
    assert ds.stats["splits"]["train"]["review_images_beyond_first"] == 1
    nil = ds.splits["test"][-1]  # gold_entity_info null: NIL, kept; empty header: body alone
    assert (nil.id, nil.gold, nil.image, nil.context) == ("24", None, None, "My toaster burns everything.")
    assert ds.stats["splits"]["test"]["gold_none"] == 1 and ds.stats["gold_none"] == 1
    assert ds.stats["splits"]["dev"]["source"].endswith("bestbuy_review_2.3.17.11.19.16.1_update_candidate.json")


def test_export_round_trips_the_kb(sample: Path, tmp_path: Path) -> None:
    """`mel eval` indexes the KB written by Dataset.write: reading it back must give the same content hash."""
    ds = load_dataset("ameli", sample)
    paths = ds.write(tmp_path / "export")
    assert read_kb(paths["kb"]).content_hash() == ds.kb.content_hash()
    back = read_mentions(paths["test"])
    assert [m.gold for m in back] == ["102", "103", "104", None]


def test_dev_carved_from_train_when_absent(tmp_path: Path) -> None:
    d = write_ameli_sample(tmp_path, release_layout_dev=False)
    (d / "dev.json").unlink()
    ds = load_dataset("ameli", tmp_path)
    assert len(ds.splits["train"]) + len(ds.splits["dev"]) == 6
    assert not {m.id for m in ds.splits["train"]} & {m.id for m in ds.splits["dev"]}


def _rewrite(path: Path, edit) -> None:  # noqa: ANN001
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


@pytest.mark.parametrize(("file", "edit", "where"), [
    ("products.json", lambda r: r[2]["Spec"][0]["text"][1].pop("specification"),
     ("record #2 (id 103)", "Spec[0].text[1].specification")),
    ("products.json", lambda r: r[1].update(product_name=""), ("record #1 (id 102)", "product_name")),
    ("products.json", lambda r: r[4].update(id=101), ("duplicate product id '101'", "'id'")),
    ("products.json", lambda r: r[0].update(image_path="101_a.png"), ("record #0", "image_path")),
    ("train.json", lambda r: r[3].pop("gold_entity_info"), ("record #3 (review_id 4)", "gold_entity_info")),
    ("train.json", lambda r: r[1].update(body=7), ("record #1", "'body'")),
    ("train.json", lambda r: r[0]["gold_entity_info"].update(id=[1]), ("record #0", "gold_entity_info.id")),
    ("test.json", lambda r: r.append("not an object"), ("record #4", "expected an object")),
    ("test.json", lambda r: r[0].update(review_id=4), ("duplicate review id '4'", "review_id")),
])
def test_malformed_records_name_file_record_and_field(sample: Path, file: str, edit, where) -> None:  # noqa: ANN001
    _rewrite(sample / "ameli" / file, edit)
    with pytest.raises(InputError) as e:
        load_dataset("ameli", sample)
    msg = str(e.value)
    assert file in msg, msg
    for part in where:
        assert part in msg, msg


def test_missing_review_files_and_not_an_array(tmp_path: Path) -> None:
    d = write_ameli_sample(tmp_path)
    for f in ("train.json", "test.json"):
        (d / f).unlink()
    import shutil

    shutil.rmtree(d / "val")
    with pytest.raises(InputError, match="no review file found"):
        load_dataset("ameli", tmp_path)
    (d / "test.json").write_text(json.dumps({"1": {}}))
    with pytest.raises(InputError, match=r"test\.json: expected a JSON array"):
        load_dataset("ameli", tmp_path)
