"""Resumable builds (content-addressed staging shards), KB deltas, incremental updates and the versioned
index layout -- with the hashing test encoder, no Ray."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mel.config import Config
from mel.errors import ArtifactMismatch, InputError
from mel.index import IndexArtifact, read_manifest
from mel.index.staging import ShardStore, ShardWriter, plan_ranges, staging_dir_for, text_fingerprints
from mel.index.update import (
    CURRENT,
    ParentIndex,
    latest_version,
    resolve_index_dir,
    set_current,
)
from mel.kb.delta import apply_delta, read_delta
from mel.kb.reader import read_kb, write_kb
from mel.text import entity_text
from mel.types import Entity
from pipelines.index import run_index_local, run_update
from tests.doubles.encoders import HashingTextEncoder

REPO = Path(__file__).resolve().parents[2]
DEMO_KB = REPO / "data" / "demo" / "kb" / "entities.jsonl"


class CountingEncoder(HashingTextEncoder):
    """The hashing encoder, recording every text it embeds; ``fail_on`` makes that call raise."""

    def __init__(self, model_id: str | None = None, fail_on: int | None = None) -> None:
        super().__init__(dim=64, model_id=model_id)
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    @property
    def texts(self) -> list[str]:
        return [t for c in self.calls for t in c]

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.fail_on is not None and len(self.calls) + 1 == self.fail_on:
            raise RuntimeError("encoder died (injected)")
        self.calls.append(list(texts))
        return super().encode(texts)


class CountingColourEncoder:
    """Image test double: normalised mean RGB plus a constant (dim 4), counting the images it embeds."""

    id = "fake:mean-colour"
    dim = 4
    image_size = 8

    def __init__(self) -> None:
        self.images = 0

    def encode(self, images: list) -> np.ndarray:
        self.images += len(images)
        out = np.array([[*np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) / 255.0, 0.1] for im in images],
                       dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _entities(n: int = 12) -> list[Entity]:
    return [Entity(id=f"Q{100 + i}", name=f"City {i}", description=f"capital number {i}",
                   attributes={"country": f"land {i}", "rank": str(i)}) for i in range(n)]


def _cfg(**index: object) -> Config:
    return Config(method="retrieval", pipelines={"index": {"batch_size": 2, "shard_rows": 4, **index}})


def _staged(out: Path) -> list[str]:
    d = staging_dir_for(out)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ----------------------------------------------------------------------------- resumable builds
def test_interrupted_build_resumes_from_staged_shards(tmp_path: Path) -> None:
    kb = write_kb(_entities(), tmp_path / "kb.jsonl")
    cfg = _cfg()
    out = tmp_path / "idx"
    # 6 batches of 2; the 4th call fails: positions 0..5 embedded, only shard 0 (positions 0..3) is complete
    with pytest.raises(RuntimeError, match="injected"):
        run_index_local(kb, out, cfg, CountingEncoder(fail_on=4))
    assert not out.exists()
    staged = _staged(out)
    assert len(staged) == 1 and staged[0].startswith("text-00000-")

    enc = CountingEncoder()
    run_index_local(kb, out, cfg, enc)
    texts = [entity_text(e, cfg.index.entity_template) for e in read_kb(kb).entities]
    assert enc.texts == texts[4:]  # shard 0 was reused, not embedded again
    m = read_manifest(out)
    assert (m.counts["resumed_vectors"], m.counts["reused_vectors"], m.counts["embedded_vectors"]) == (4, 4, 8)
    assert not staging_dir_for(out).exists()  # removed after success

    clean = run_index_local(kb, tmp_path / "clean", cfg, CountingEncoder())
    np.testing.assert_array_equal(np.load(out / "text.npy"), np.load(clean / "text.npy"))
    assert (out / "entities.parquet").read_bytes() == (clean / "entities.parquet").read_bytes()
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(p.name for p in (clean / "shards").iterdir())
    art = IndexArtifact.load(out)
    _, ids = art.search_text(CountingEncoder().encode(texts), k=1)
    assert [r[0] for r in ids] == art.ids


def test_changed_text_encoder_or_template_invalidates_exactly_the_affected_shards(tmp_path: Path) -> None:
    ents = _entities()
    kb = write_kb(ents, tmp_path / "kb.jsonl")
    out = tmp_path / "idx"
    cfg = _cfg(keep_staging=True)
    run_index_local(kb, out, cfg, CountingEncoder())
    first = _staged(out)
    assert len(first) == 3

    ents[5] = replace(ents[5], name="Renamed city")  # position 5 lies in shard 1 (positions 4..7)
    kb = write_kb(ents, tmp_path / "kb.jsonl")
    enc = CountingEncoder()
    run_index_local(kb, out, cfg, enc)
    assert len(enc.texts) == 4 and enc.texts[1].startswith("Renamed city")
    second = _staged(out)
    assert len(second) == 3 and second[0] == first[0] and second[2] == first[2] and second[1] != first[1]
    assert read_manifest(out).counts["resumed_vectors"] == 8

    enc = CountingEncoder(model_id="fake:other-encoder")  # same dim, other encoder: nothing may be reused
    run_index_local(kb, out, cfg, enc)
    assert len(enc.texts) == 12 and not set(_staged(out)) & set(second)
    assert read_manifest(out).encoder_id == "fake:other-encoder"

    other = _cfg(keep_staging=True)
    other.index.entity_template = "{name}"
    enc = CountingEncoder(model_id="fake:other-encoder")
    run_index_local(kb, out, other, enc)
    assert len(enc.texts) == 12

    enc = CountingEncoder(model_id="fake:other-encoder")  # resume=False embeds everything again
    run_index_local(kb, out, _cfg(keep_staging=True, resume=False), enc)
    assert len(enc.texts) == 12


def test_damaged_or_mislabelled_staged_shards_are_not_reused(tmp_path: Path) -> None:
    kb = write_kb(_entities(), tmp_path / "kb.jsonl")
    out = tmp_path / "idx"
    cfg = _cfg(keep_staging=True)
    run_index_local(kb, out, cfg, CountingEncoder())
    staging = staging_dir_for(out)
    s0, s1, s2 = sorted(staging.iterdir())
    shutil.copy(s1, s0)  # shard 1's content under shard 0's name: its recorded key differs
    s2.write_bytes(b"PAR1 truncated")  # a damaged file
    (staging / ".text-00001-x.parquet.tmp-1234").write_bytes(b"half")  # a write that never finished
    (staging / "text-00009-0123456789abcdef0123456789abcdef.parquet").write_bytes(b"stale")  # other KB content
    enc = CountingEncoder()
    run_index_local(kb, out, cfg, enc)
    assert len(enc.texts) == 8  # shards 0 and 2 embedded again; shard 1 reused
    assert sorted(p.name for p in staging.iterdir()) == [s0.name, s1.name, s2.name]
    clean = run_index_local(kb, tmp_path / "clean", _cfg(), CountingEncoder())
    np.testing.assert_array_equal(np.load(out / "text.npy"), np.load(clean / "text.npy"))


def test_shard_writer_buffers_out_of_order_rows_per_range(tmp_path: Path) -> None:
    ids = [f"E{i}" for i in range(10)]
    texts = [f"text {i}" for i in range(10)]
    ranges = plan_ranges("text", text_fingerprints(ids, texts), 4, encoder_id="enc", dim=3)
    assert [(r.start, r.stop) for r in ranges] == [(0, 4), (4, 8), (8, 10)]
    assert len({r.key for r in ranges}) == 3
    store = ShardStore(tmp_path / "st", "text", ranges, "enc", 3)
    assert store.scan() == []
    w = ShardWriter(store, ranges)
    vec = np.arange(30, dtype=np.float32).reshape(10, 3)

    def add(rows: list[int]) -> None:
        w.add({"position": rows, "entity_id": [ids[i] for i in rows], "vector": vec[rows]})

    add([9, 3, 8])  # completes range 2 (8..9)
    assert [f.name for f in w.files] == [store.file(ranges[2]).name]
    add([0, 1, 2])  # completes range 0
    assert len(w.files) == 2
    with pytest.raises(RuntimeError, match=r"incomplete.*rows 4\.\.7 got 0 of 4"):
        w.close()
    with pytest.raises(RuntimeError, match="not in a shard range being written"):
        add([0])  # range 0 is already written
    add([7, 6, 5, 4])
    assert w.close() and [r.index for r in store.scan()] == [0, 1, 2]
    import pyarrow.parquet as pq

    t = pq.read_table(store.file(ranges[1]))
    assert t.column("position").to_pylist() == [4, 5, 6, 7]
    np.testing.assert_array_equal(np.stack(t.column("vector").to_pylist()), vec[4:8])


# ----------------------------------------------------------------------------- KB delta
def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_delta_validation_names_file_line_and_field(tmp_path: Path) -> None:
    base = read_kb(write_kb(_entities(3), tmp_path / "kb.jsonl"))
    cases = [
        ([{"id": "Q100", "op": "remove"}], r"d\.jsonl:1: field 'op': must be 'upsert' or 'delete'"),
        ([{"id": "Q100", "op": "delete", "name": "x"}], r"d\.jsonl:1: a delete record holds only 'id' and 'op'"),
        ([{"id": "Q9", "name": "A"}, {"id": "Q9", "op": "delete"}], r"d\.jsonl:2: field 'id': id 'Q9' appears twice"),
        ([{"id": "Q9", "name": "A", "aliases": [3]}], r"d\.jsonl:1: field 'aliases\[0\]': must be a string"),
        ([{"id": "Q9", "name": "A", "alias": ["x"]}], r"d\.jsonl:1: unknown field\(s\) 'alias'.*op"),
        ([{"op": "delete"}], r"d\.jsonl:1: field 'id': required field is missing"),
        ([{"id": "Q9"}], r"d\.jsonl:1: field 'name': required field is missing"),
    ]
    for records, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            read_delta(_write_jsonl(tmp_path / "d.jsonl", records))
    delta = read_delta(_write_jsonl(tmp_path / "d.jsonl", [{"id": "Q100", "name": "X"}, {"id": "Q7", "op": "delete"}]))
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'id': cannot delete 'Q7'"):
        apply_delta(base, delta)
    with pytest.raises(InputError, match="KB delta file not found"):
        read_delta(tmp_path / "none.jsonl")


def test_apply_delta_parquet_upserts_and_deletes(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = read_kb(write_kb(_entities(4), tmp_path / "kb.jsonl"))
    pq.write_table(pa.table({
        "id": ["Q101", "NEW", "Q102", "Q103"],
        "op": [None, "upsert", "delete", None],
        "name": ["City 1 changed", "New", None, "City 3"],
        "description": [None, "brand new", None, "capital number 3"],
        "attributes": pa.array([[("country", "land 1")], None, None, [("country", "land 3"), ("rank", "3")]],
                               pa.map_(pa.string(), pa.string())),
    }), tmp_path / "d.parquet")
    res = apply_delta(base, read_delta(tmp_path / "d.parquet"))
    assert res.kb.ids == ["Q100", "Q101", "Q103", "NEW"]
    assert (res.added, res.changed, res.removed, res.unchanged) == (["NEW"], ["Q101"], ["Q102"], ["Q103"])
    assert res.kb.get("Q101").name == "City 1 changed" and res.kb.get("Q100") == base.get("Q100")
    assert res.counts() == {"added": 1, "changed": 1, "removed": 1, "upserts_unchanged": 1}


# ----------------------------------------------------------------------------- incremental update
DELTA = [
    {"id": "demo:zorblax-gadget", "name": "Zorblax Gadget", "description": "A fictional gadget added by a delta.",
     "attributes": {"instance of": "gadget", "maker": "Zorblax Industries"}},
    {"id": "demo:atari-jaguar", "name": "Atari Jaguar", "aliases": ["Jaguar"],
     "attributes": {"instance of": "retro video game console", "manufacturer": "Atari Corporation"}},
    {"id": "demo:mercury-god", "op": "delete"},
]


def test_update_demo_kb_reuses_unchanged_vectors_and_equals_a_full_build(tmp_path: Path) -> None:
    cfg = Config(method="retrieval", pipelines={"index": {"batch_size": 8, "shard_rows": 16}})
    root = tmp_path / "indexes"
    v1 = run_index_local(DEMO_KB, root / "v0001", cfg, CountingEncoder())
    assert (root / CURRENT).read_text().strip() == "v0001" and latest_version(root) == v1
    old_files = {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()}
    delta = _write_jsonl(tmp_path / "delta.jsonl", DELTA)

    enc = CountingEncoder()
    v2 = run_update(delta, root, None, cfg, encoder=enc)  # the versioned root resolves to CURRENT (v0001)
    assert v2 == root / "v0002" and latest_version(root) == v2 and resolve_index_dir(root) == v2
    assert (root / CURRENT).read_text().strip() == "v0002"
    m = read_manifest(v2)
    assert m.version == 2 and m.parent is not None and m.parent["dir"] == "v0001" and m.parent["version"] == 1
    assert m.parent["kb_hash"] == read_manifest(v1).kb_hash and m.parent["delta"] == str(delta)
    c = m.counts
    assert (c["added"], c["changed"], c["removed"], c["entities"]) == (1, 1, 1, 54)
    assert (c["embedded_vectors"], c["reused_vectors"]) == (2, 52)
    # only the added and the changed entity were embedded
    template = cfg.index.entity_template
    assert len(enc.texts) == 2 and enc.texts[0].startswith("Atari Jaguar. instance of: retro")
    assert enc.texts[1].startswith("Zorblax Gadget")

    old, new = IndexArtifact.load(v1), IndexArtifact.load(v2)
    assert "demo:mercury-god" in old and "demo:mercury-god" not in new
    old_vecs, new_vecs = np.load(v1 / "text.npy"), np.load(v2 / "text.npy")
    for eid in new.ids:
        if eid not in ("demo:zorblax-gadget", "demo:atari-jaguar"):  # unchanged: bit-identical vectors
            np.testing.assert_array_equal(new_vecs[new.position(eid)], old_vecs[old.position(eid)])
    assert not np.array_equal(new_vecs[new.position("demo:atari-jaguar")], old_vecs[old.position("demo:atari-jaguar")])
    q = CountingEncoder().encode([new.text("demo:zorblax-gadget"), old.text("demo:mercury-god")])
    _, ids = new.search_text(q, k=3)
    assert ids[0][0] == "demo:zorblax-gadget" and "demo:mercury-god" not in ids[1]

    # the same as a full build of the resulting KB
    result = apply_delta(read_kb(DEMO_KB), read_delta(delta))
    full = run_index_local(write_kb(result.kb, tmp_path / "kb2.jsonl"), tmp_path / "full", cfg, CountingEncoder())
    ref = IndexArtifact.load(full)
    assert ref.ids == new.ids and read_manifest(full).kb_hash == m.kb_hash
    np.testing.assert_allclose(np.load(full / "text.npy"), new_vecs, atol=1e-6)
    assert [new.text(i) for i in new.ids] == [entity_text(e, template) for e in result.kb.entities]
    # the old version is untouched
    assert {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()} == old_files

    # a second update chains: v0002 -> v0003; the default output never overwrites
    v3 = run_update(_write_jsonl(tmp_path / "d2.jsonl", [{"id": "demo:zorblax-gadget", "op": "delete"}]), v2, None,
                    cfg, encoder=CountingEncoder())
    assert v3 == root / "v0003" and read_manifest(v3).version == 3 and read_manifest(v3).counts["embedded_vectors"] == 0
    with pytest.raises(InputError, match="already exists; give --out"):
        run_update(delta, v1, None, cfg, encoder=CountingEncoder())
    set_current(root, "v0001")
    assert latest_version(root) == v1


def test_update_refuses_other_encoder_or_template(tmp_path: Path) -> None:
    cfg = _cfg()
    base = run_index_local(write_kb(_entities(), tmp_path / "kb.jsonl"), tmp_path / "idx", cfg, CountingEncoder())
    delta = _write_jsonl(tmp_path / "d.jsonl", [{"id": "Q100", "op": "delete"}])
    with pytest.raises(ArtifactMismatch, match=r"text encoder.*'fake:hashing-64'.*'fake:other'.*full build"):
        run_update(delta, base, tmp_path / "new", cfg, encoder=CountingEncoder(model_id="fake:other"))
    other = _cfg()
    other.index.entity_template = "{name}. {description}"
    with pytest.raises(ArtifactMismatch, match=r"entity template \(manifest field 'entity_template'\)"):
        run_update(delta, base, tmp_path / "new", other, encoder=CountingEncoder())
    with pytest.raises(ArtifactMismatch, match="image encoder"):
        run_update(delta, base, tmp_path / "new", cfg, encoder=CountingEncoder(), image_encoder=CountingColourEncoder())
    with pytest.raises(InputError, match="must differ from the index being updated"):
        run_update(delta, base, base, cfg, encoder=CountingEncoder())
    with pytest.raises(InputError, match="index directory not found"):
        ParentIndex(tmp_path / "new")
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        run_update(delta, tmp_path / "half", None, cfg, encoder=CountingEncoder())
    assert not (tmp_path / "new").exists()
    assert read_manifest(base).version == 1 and read_manifest(base).parent is None


def test_update_with_images_embeds_only_new_or_changed_images(tmp_path: Path) -> None:
    from PIL import Image

    colours = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250), "grey": (90, 90, 90)}
    for name, rgb in colours.items():
        Image.new("RGB", (20, 12), rgb).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    ents = [Entity(id="A", name="Alpha", images=("red.png", "blue.png")),
            Entity(id="B", name="Beta", images=("green.png", "corrupt.png")),
            Entity(id="C", name="Gamma")]
    cfg = _cfg()
    base = run_index_local(write_kb(ents, tmp_path / "kb.jsonl"), tmp_path / "v0001", cfg, CountingEncoder(),
                           image_encoder=CountingColourEncoder())
    assert read_manifest(base).counts["images_missing"] == 1
    Image.new("RGB", (20, 12), (200, 200, 0)).save(tmp_path / "blue.png")  # same path, new content
    delta = _write_jsonl(tmp_path / "d.jsonl", [{"id": "C", "name": "Gamma", "images": ["grey.png"]}])
    img = CountingColourEncoder()
    enc = CountingEncoder()
    new = run_update(delta, base, None, cfg, encoder=enc, image_encoder=img)
    assert img.images == 2 and enc.texts == []  # grey.png (new) and blue.png (file changed); C's text is the same
    m = read_manifest(new)
    assert (m.counts["image_vectors"], m.counts["embedded_images"], m.counts["reused_images"]) == (4, 2, 3)
    assert m.counts["images_missing"] == 1  # corrupt.png: reused as unreadable, not retried
    full = run_index_local(write_kb(apply_delta(read_kb(tmp_path / "kb.jsonl"), read_delta(delta)).kb,
                                    tmp_path / "kb2.jsonl"), tmp_path / "full", cfg, CountingEncoder(),
                           image_encoder=CountingColourEncoder())
    np.testing.assert_allclose(np.load(new / "image.npy"), np.load(full / "image.npy"), atol=1e-6)
    np.testing.assert_array_equal(np.load(new / "image_owner.npy"), [0, 0, 1, 2])
    art = IndexArtifact.load(new, expect_image_encoder_id="fake:mean-colour")
    _, ids = art.search_image(CountingColourEncoder().encode([Image.new("RGB", (8, 8), colours["grey"])]), k=1)
    assert ids == [["C"]]


def test_versioned_layout_helpers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(InputError, match="no CURRENT file and no complete vNNNN"):
        latest_version(root)
    cfg = _cfg()
    kb = write_kb(_entities(3), tmp_path / "kb.jsonl")
    v1 = run_index_local(kb, root / "v0001", cfg, CountingEncoder())
    (root / CURRENT).unlink()
    (root / "v0002").mkdir()  # an unfinished build: no manifest
    assert latest_version(root) == v1 and resolve_index_dir(root) == v1 and resolve_index_dir(v1) == v1
    (root / CURRENT).write_text("v0002\n")
    with pytest.raises(InputError, match="not a complete index directory"):
        latest_version(root)
    (root / CURRENT).write_text("../elsewhere\n")
    with pytest.raises(InputError, match="must hold the name of an index directory"):
        latest_version(root)
    with pytest.raises(InputError, match="not a complete index directory"):
        set_current(root, "v0002")
    # a plain (non-versioned) output writes no CURRENT
    run_index_local(kb, tmp_path / "plain", cfg, CountingEncoder())
    assert not (tmp_path / CURRENT).exists()


def test_publish_never_moves_current_back_and_staging_is_locked(tmp_path: Path) -> None:
    from mel.index.staging import staging_lock

    cfg = _cfg()
    kb = write_kb(_entities(3), tmp_path / "kb.jsonl")
    root = tmp_path / "root"
    run_index_local(kb, root / "v0002", cfg, CountingEncoder())
    run_index_local(kb, root / "v0001", cfg, CountingEncoder())  # rebuilding an older version
    assert (root / CURRENT).read_text().strip() == "v0002"
    with staging_lock(staging_dir_for(root / "v0003")):
        with pytest.raises(InputError, match="another build of the same index is running"):
            run_index_local(kb, root / "v0003", cfg, CountingEncoder())
    run_index_local(kb, root / "v0003", cfg, CountingEncoder())
    assert latest_version(root) == root / "v0003"


def test_cli_index_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mel.entrypoints.cli import main

    cases = [
        (["--update", "d.jsonl", "--out", "x"], "--update needs --from"),
        (["--kb", "kb.jsonl", "--from", "x", "--out", "y"], "--from is only used with --update"),
        (["--kb", "kb.jsonl"], "--out is required"),
    ]
    for argv, message in cases:
        assert main(["index", *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --kb and --update are exclusive
        main(["index", "--kb", "kb.jsonl", "--update", "d.jsonl", "--from", "x"])
    assert main(["index", "--update", str(tmp_path / "none.jsonl"), "--from", str(tmp_path / "none"), "--local"]) == 2
    assert "index directory not found" in capsys.readouterr().err
