"""Distributed faiss build on local Ray: parallel add (one Ray task per embedding shard) gives the same index as
the in-memory single-process build, also merged on disk; a 2-shard index built by `mel index` on Ray links
through the Retriever stage (and the step a Retriever deployment replica runs) exactly like a single
index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mel.config import Config, IndexConfig
from mel.index import IndexArtifact, read_manifest
from mel.types import Entity, Mention
from pipelines.faiss_build import RayParallelAdd
from tests.fixtures.faiss_data import assemble, clustered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """5000 clustered vectors to index and 100 held-out queries from the same mixture."""
    x = clustered(5100, 32, clusters=50, seed=21)
    return x[:5000], x[5000:]


@pytest.mark.parametrize("factory", ["Flat", "IVF64_HNSW16,Flat", "IVF64_HNSW16,PQ8x4", "SQ8"])
def test_ray_parallel_add_equals_in_memory_build(ray_local: None, tmp_path: Path, data: tuple[np.ndarray, np.ndarray],
                                                 factory: str) -> None:
    x, q = data
    cfg = IndexConfig(factory=factory, nprobe=8)
    single = IndexArtifact.load(assemble(tmp_path / "single", x, rows_per_shard=1000, index_cfg=cfg))
    adder = RayParallelAdd(max_in_flight=2)
    par = IndexArtifact.load(assemble(tmp_path / "ray", x, rows_per_shard=1000, index_cfg=cfg, parallel_add=adder))
    assert adder.tasks == 5  # one task per embedding shard file
    p = par.manifest.index_params
    assert p["add"] == "parallel" and p["merge"] == "in-memory" and par.manifest.factory == factory
    s1, i1 = single.search_text(q, 10)
    s2, i2 = par.search_text(q, 10)
    assert i1 == i2
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)


def test_ray_parallel_add_merged_on_disk(ray_local: None, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    mem = IndexArtifact.load(assemble(tmp_path / "mem", x, index_cfg=IndexConfig(factory="IVF64,Flat", nprobe=8)))
    cfg = IndexConfig(factory="IVF64,Flat", nprobe=8, on_disk="always", search_shards=2)
    out = assemble(tmp_path / "disk", x, rows_per_shard=1000, index_cfg=cfg, parallel_add=RayParallelAdd())
    disk = IndexArtifact.load(out)
    assert disk.manifest.index_params["merge"] == "on-disk" and disk.search_info["shards"] == 2
    assert (out / "text-00000.ivfdata").is_file() and (out / "text-00001.ivfdata").is_file()
    assert disk.search_text(q, 10)[1] == mem.search_text(q, 10)[1]


CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw"]
KINDS = ["museum", "bridge", "football club", "university", "cathedral"]


def _entities() -> list[Entity]:
    return [Entity(id=f"Q{100 + i * len(KINDS) + j}", name=f"{city} {kind}",
                   description=f"A {kind} located in {city}.", attributes={"instance of": kind, "located in": city})
            for i, city in enumerate(CITIES) for j, kind in enumerate(KINDS)]  # 40 entities


def test_two_shard_index_links_through_the_retriever(ray_local: None, tmp_path: Path, text_encoder) -> None:  # noqa: ANN001
    from mel.kb.reader import write_kb
    from mel.stages.retrieve import Retriever
    from pipelines.index import run_index, run_index_local

    kb_file = write_kb(_entities(), tmp_path / "kb.jsonl")
    cfg = Config(method="retrieval", index={"search_shards": 2},
                 pipelines={"index": {"workers": 1, "batch_size": 8, "shard_rows": 16}})
    sharded = run_index(kb_file, tmp_path / "sharded", cfg, progress=False)
    plain = run_index_local(kb_file, tmp_path / "plain", Config(method="retrieval"), text_encoder)
    m = read_manifest(sharded)
    assert m.factory == "Flat" and m.index_params["chosen_by"] == "auto"
    assert [(s["file"], s["start"], s["stop"]) for s in m.index_params["shards"]] == [
        ("text-00000.faiss", 0, 20), ("text-00001.faiss", 20, 40)]
    assert m.index_params["add"] == "parallel"  # 40 rows in shards of 16: 3 embedding shards, 3 Ray tasks

    ents = _entities()
    mentions = [Mention(id=f"m{i}", surface=e.name, context=e.description, gold=e.id) for i, e in enumerate(ents)]
    from mel.parts import load_parts

    parts = load_parts(cfg, str(sharded), {"index"}, text_encoder=text_encoder)
    assert parts.index.search_info["shards"] == 2
    got = Retriever(parts.index, text_encoder, cfg.retrieval).retrieve(mentions, k=5)
    want = Retriever(IndexArtifact.load(plain), text_encoder, cfg.retrieval).retrieve(mentions, k=5)
    assert [[c.entity_id for c in row] for row in got] == [[c.entity_id for c in row] for row in want]
    np.testing.assert_allclose([[c.score for c in row] for row in got], [[c.score for c in row] for row in want],
                               atol=1e-5)
    assert sum(row[0].entity_id == mm.gold for row, mm in zip(got, mentions)) >= 36  # each finds itself (mostly)

    # what a Retriever deployment replica runs: load_parts + the registered retrieve step, unchanged
    from mel.runner import run_steps
    from mel.steps import get_step
    from mel.steps.base import MentionState

    step = get_step("retrieve")(cfg, load_parts(cfg, str(sharded), {"index"}, text_encoder=text_encoder))
    served = run_steps([step], [MentionState(m, k=5) for m in mentions[:6]])
    assert [[c.entity_id for c in r.candidates[:5]] for r in served] == [[c.entity_id for c in row]
                                                                         for row in want[:6]]
