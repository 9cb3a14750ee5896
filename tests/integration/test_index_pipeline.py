"""The Ray Data indexing job with the real text encoder: same vectors as the single-process build, a
loadable artifact that finds each entity by its own text, and no output after a failure mid-build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mel.config import Config
from mel.types import Entity

pytestmark = pytest.mark.integration

CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin", "Athens"]
KINDS = ["museum", "bridge", "football club", "university", "cathedral"]


def _entities() -> list[Entity]:
    out = []
    for i, city in enumerate(CITIES):
        for j, kind in enumerate(KINDS):
            n = i * len(KINDS) + j
            out.append(Entity(id=f"Q{1000 + n}", name=f"{city} {kind} {n}",
                              description=f"A {kind} located in {city}, number {n} of the test KB.",
                              attributes={"instance of": kind, "located in": city, "serial": str(n)}))
    return out  # 50 entities


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config(method="retrieval", pipelines={"index": {"workers": 2, "batch_size": 8, "shard_rows": 16,
                                                           "cpus_per_worker": 1}})


@pytest.fixture(scope="module")
def kb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mel.kb.reader import write_kb

    return write_kb(_entities(), tmp_path_factory.mktemp("kb") / "kb.jsonl")


@pytest.fixture(scope="module")
def text_encoder(cfg: Config):  # noqa: ANN201
    from mel.compat import prepare

    prepare()
    from mel.encoders import build_text_encoder
    from pipelines.common import model_cache_dir

    return build_text_encoder(cfg.models.text_encoder, model_cache_dir(cfg))


def test_ray_index_matches_local_and_finds_entities(ray_local: None, tmp_path: Path, kb_file: Path, cfg: Config,
                                                   text_encoder) -> None:  # noqa: ANN001
    from mel.index import IndexArtifact, read_manifest
    from pipelines.index import run_index, run_index_local

    ray_dir = run_index(kb_file, tmp_path / "ray", cfg, progress=False)
    local_dir = run_index_local(kb_file, tmp_path / "local", cfg, text_encoder)
    a, b = np.load(ray_dir / "text.npy"), np.load(local_dir / "text.npy")
    assert a.shape == (50, text_encoder.dim)
    np.testing.assert_allclose(a, b, atol=1e-5)
    ma, mb = read_manifest(ray_dir), read_manifest(local_dir)
    for f in ("encoder_id", "dim", "kb_hash", "config_hash", "counts", "factory", "metric", "entity_template"):
        assert getattr(ma, f) == getattr(mb, f), f
    assert ma.encoder_id == text_encoder.id and ma.counts["entities"] == 50
    assert (ray_dir / "entities.parquet").read_bytes() == (local_dir / "entities.parquet").read_bytes()
    assert len(list((ray_dir / "shards").glob("text-*.parquet"))) >= 2

    art = IndexArtifact.load(ray_dir, expect_encoder_id=text_encoder.id, expect_dim=text_encoder.dim,
                             expect_metric="ip")
    scores, ids = art.search_text(text_encoder.encode([art.text(i) for i in art.ids]), k=5)
    assert [row[0] for row in ids] == art.ids
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failure_mid_build_leaves_no_output(ray_local: None, tmp_path: Path, kb_file: Path, cfg: Config,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.index as job
    from mel.index.build import ShardWriter

    class FailingWriter(ShardWriter):
        def add(self, columns):  # noqa: ANN001, ANN201
            if self.files:  # a shard is already in the temp build dir: fail mid-build
                assert self.files[0].is_file()
                raise OSError("disk full (injected)")
            return super().add(columns)

    monkeypatch.setattr(job, "ShardWriter", FailingWriter)
    one_worker = cfg.model_copy(deep=True)
    one_worker.pipelines.index.workers = 1  # cheaper: one actor loads the model
    with pytest.raises(OSError, match="injected"):
        job.run_index(kb_file, tmp_path / "idx", one_worker, progress=False)
    # no index directory; only the complete shards stay in the staging dir, for a rerun to resume from
    assert [p.name for p in tmp_path.iterdir()] == ["idx.staging"]
    staged = sorted(f.name for f in (tmp_path / "idx.staging").iterdir())
    assert staged and all(f.startswith("text-") and f.endswith(".parquet") for f in staged)


def test_ray_image_vectors_match_local(ray_local: None, tmp_path: Path, tiny_clip_config: str) -> None:
    """Image path: CPU decode stage + image encoder actor pool (tiny random open_clip, seeded) = local loop."""
    from PIL import Image

    from mel.index import IndexArtifact, read_manifest
    from mel.kb.reader import write_kb
    from pipelines.common import decode_image, to_pil
    from pipelines.index import _build_image_encoder, run_index, run_index_local

    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (24 + 5 * i, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    ents = [Entity(id=f"E{i}", name=f"thing {i}", images=(f"{i}.png",)) for i in range(4)]
    ents += [Entity(id="E4", name="two images", images=("4.png", "5.png")),
             Entity(id="E5", name="broken image", images=("6.png", "bad.png")),
             Entity(id="E6", name="no image")]
    kb = write_kb(ents, tmp_path / "kb.jsonl")
    cfg = Config(method="retrieval",
                 models={"image_encoder": {"enabled": True, "model": tiny_clip_config, "batch_size": 3}},
                 pipelines={"index": {"workers": 1, "batch_size": 4}})
    ray_dir = run_index(kb, tmp_path / "ray", cfg, progress=False)
    local_dir = run_index_local(kb, tmp_path / "local", cfg)
    ma, mb = read_manifest(ray_dir), read_manifest(local_dir)
    assert ma.counts == mb.counts
    assert {k: ma.counts[k] for k in ("entities", "text_vectors", "image_vectors", "images_missing")} == {
        "entities": 7, "text_vectors": 7, "image_vectors": 7, "images_missing": 1}
    assert ma.counts["embedded_images"] == 8 and ma.counts["reused_images"] == 0  # 8 image rows, one unreadable
    assert ma.image_encoder_id == mb.image_encoder_id and ma.image_dim == 32
    np.testing.assert_array_equal(np.load(ray_dir / "image_owner.npy"), [0, 1, 2, 3, 4, 4, 5])
    np.testing.assert_allclose(np.load(ray_dir / "image.npy"), np.load(local_dir / "image.npy"), atol=1e-5)

    art = IndexArtifact.load(ray_dir, expect_image_encoder_id=ma.image_encoder_id)
    enc = _build_image_encoder(cfg.models.image_encoder, None)
    q = enc.encode(to_pil([decode_image(str(tmp_path / "5.png"), enc.image_size)]))
    scores, ids = art.search_image(q, k=3)
    assert ids[0][0] == "E4" and scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert art.image_scores(q[0], ["E6", "E4"])[0] is None
