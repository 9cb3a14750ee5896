"""Index at scale (no Ray): choosing the factory, manifest params, sharded search and its merge, on-disk IVF,
the parallel-add contract (run in process), nprobe at load, and the GPU decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mel.config import IndexConfig
from mel.errors import ArtifactMismatch, ConfigError, InputError
from mel.index import IndexArtifact, build_faiss, read_manifest, write_manifest
from mel.index.faiss_ops import sequential_add
from mel.index.faiss_plan import (
    auto_nlist,
    choose_factory,
    parse_factory,
    pq_sub_quantizers,
    resolve_use_gpu,
    shard_ranges,
)
from mel.index.faiss_shards import merge_topk
from tests.fixtures.faiss_data import assemble, clustered

BIG = 10**6  # MiB: a memory budget nothing exceeds


# ----------------------------------------------------------------------------- choose_factory
def test_auto_is_flat_below_threshold_and_ivf_hnsw_from_it() -> None:
    cfg = IndexConfig(memory_budget_mb=BIG)
    small = choose_factory(99_999, 384, cfg)
    assert small.factory == "Flat" and small.chosen_by == "auto" and small.nlist is None and small.train_size == 0
    assert small.nprobe is None and not small.on_disk and small.search_shards == 1
    p = choose_factory(100_000, 384, cfg)
    assert p.factory == "IVF1024_HNSW32,Flat" and (p.nlist, p.nprobe, p.hnsw_m, p.ef_search) == (1024, 16, 32, 64)
    assert p.train_size == 40 * 1024 and p.is_ivf and p.mergeable
    m = choose_factory(1_000_000, 384, cfg)
    assert m.factory == "IVF4096_HNSW32,Flat" and m.nprobe == 64 and m.ef_search == 128
    assert m.train_size == 40 * 4096 and m.estimated_mb > 1_000_000 * 384 * 4 / 2**20
    # the manifest params are JSON-able and hold the factory and its parameters
    params = json.loads(json.dumps(m.params()))
    assert params["factory"] == m.factory and params["nlist"] == 4096 and params["nprobe"] == 64


def test_auto_compresses_when_flat_vectors_do_not_fit() -> None:
    n, d = 1_000_000, 384  # flat ~1.5 GiB, SQ8 ~0.37 GiB, PQ48 ~0.05 GiB (plus ids)
    sq = choose_factory(n, d, IndexConfig(memory_budget_mb=1000))
    assert sq.factory == "IVF4096_HNSW32,SQ8" and sq.codec == "SQ8" and sq.estimated_mb <= 1000
    pq = choose_factory(n, d, IndexConfig(memory_budget_mb=200))
    assert pq.factory == "IVF4096_HNSW32,PQ48" and (pq.pq_m, pq.pq_nbits) == (48, 8) and pq.estimated_mb <= 200
    assert not pq.on_disk
    # even PQ does not fit: the IVF lists are merged on disk ('auto')
    tiny = choose_factory(n, d, IndexConfig(memory_budget_mb=20))
    assert tiny.codec == "PQ48" and tiny.on_disk
    # below the IVF threshold compression applies to a flat-code index
    assert choose_factory(50_000, d, IndexConfig(memory_budget_mb=30)).factory == "SQ8"
    # PQ sub-quantizers are lowered to a divisor of the dimension; nbits != 8 is spelled out
    odd = choose_factory(n, 100, IndexConfig(memory_budget_mb=5, pq_m=48, pq_nbits=4))
    assert odd.pq_m == 25 and odd.factory.endswith(",PQ25x4")
    assert pq_sub_quantizers(384, 48) == 48 and pq_sub_quantizers(100, 48) == 25 and pq_sub_quantizers(7, 4) == 1


def test_config_knobs_and_explicit_factories() -> None:
    p = choose_factory(200_000, 64, IndexConfig(memory_budget_mb=BIG, nlist=300, nprobe=500, hnsw_m=16,
                                                ef_search=40, train_sample=5000, seed=7, search_shards=3))
    assert p.factory == "IVF300_HNSW16,Flat" and p.nprobe == 300 and p.ef_search == 40  # nprobe <= nlist
    assert p.train_size == 5000 and p.seed == 7 and p.search_shards == 3
    flat_max = choose_factory(5_000, 64, IndexConfig(memory_budget_mb=BIG, flat_max_vectors=1000))
    assert flat_max.factory == "IVF128_HNSW32,Flat" and flat_max.nlist == 128 == auto_nlist(5000)
    ex = choose_factory(50_000, 64, IndexConfig(factory="IVF256,PQ16x4", nprobe=12))
    assert ex.chosen_by == "config" and ex.factory == "IVF256,PQ16x4"
    assert (ex.nlist, ex.pq_m, ex.pq_nbits, ex.nprobe, ex.hnsw_m, ex.ef_search) == (256, 16, 4, 12, None, None)
    assert parse_factory("HNSW32") == (None, 32, None, None, "Flat")
    assert parse_factory("IVF1024_HNSW32,SQ8") == (1024, 32, None, None, "SQ8")
    assert parse_factory("OPQ16_64,IVF512,PQ16") == (512, None, 16, 8, "PQ16")
    assert choose_factory(10, 8, IndexConfig(factory="Flat")).factory == "Flat"
    assert not choose_factory(10, 8, IndexConfig(factory="HNSW16")).mergeable
    with pytest.raises(ConfigError, match="leave out IDMap"):
        choose_factory(10, 8, IndexConfig(factory="IDMap,Flat"))
    with pytest.raises(ConfigError, match="on_disk='always' needs an IVF"):
        choose_factory(10, 8, IndexConfig(factory="Flat", on_disk="always"))
    # auto nlist: 4*sqrt(n) to a power of two, never fewer than 39 training points per list
    assert auto_nlist(100_000) == 1024 and auto_nlist(1_000_000) == 4096 and auto_nlist(10**7) == 16384
    assert auto_nlist(1000) == 16 and auto_nlist(10) == 1


def test_gpu_decision_and_shard_ranges() -> None:
    assert resolve_use_gpu("auto", 0) is False and resolve_use_gpu("auto", 2) is True
    assert resolve_use_gpu("never", 4) is False and resolve_use_gpu("always", 1) is True
    with pytest.raises(ConfigError, match="faiss sees no GPU"):
        resolve_use_gpu("always", 0)
    with pytest.raises(ConfigError, match="must be 'auto'"):
        resolve_use_gpu("maybe", 1)
    assert shard_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_ranges(2, 5) == [(0, 1), (1, 2)] and shard_ranges(7, 1) == [(0, 7)]


# ----------------------------------------------------------------------------- manifest
def test_manifest_index_params_round_trip_and_old_manifests(tmp_path: Path) -> None:
    x = clustered(300, 16)
    out = assemble(tmp_path / "idx", x, rows_per_shard=100)
    m = read_manifest(out)
    assert m.factory == "Flat" and m.index_params["factory"] == "Flat" and m.index_params["chosen_by"] == "auto"
    assert m.index_params["shards"] == [{"file": "text.faiss", "start": 0, "stop": 300}]
    assert m.index_params["trained_on"] == "cpu" and m.index_params["add"] == "single-process"
    write_manifest(out, m)
    assert read_manifest(out).index_params == m.index_params
    # a manifest written before index_params existed still loads, and searches its text.faiss
    data = json.loads((out / "manifest.json").read_text())
    del data["index_params"]
    (out / "manifest.json").write_text(json.dumps(data))
    old = IndexArtifact.load(out)
    assert old.manifest.index_params == {} and old.search_text(x[5], 1)[1] == [["E5"]]
    data["index_params"] = ["not", "a", "dict"]
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="index_params"):
        read_manifest(out)


# ----------------------------------------------------------------------------- sharded search
@pytest.mark.parametrize("larger", [True, False])
def test_merge_topk_matches_one_index(larger: bool) -> None:
    import faiss

    x, q = clustered(500, 16, seed=1), clustered(20, 16, seed=2)
    make = faiss.IndexFlatIP if larger else faiss.IndexFlatL2
    whole = make(16)
    whole.add(x)
    want_d, want_i = whole.search(q, 10)
    parts_d, parts_i = [], []
    for a, b in [(0, 123), (123, 400), (400, 500)]:
        part = faiss.IndexIDMap2(make(16))
        part.add_with_ids(x[a:b], np.arange(a, b))
        d, i = part.search(q, 10)
        parts_d.append(d)
        parts_i.append(i)
    got_d, got_i = merge_topk(parts_d, parts_i, 10, larger_is_better=larger)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    # empty slots (-1) go last with the worst score; too few candidates are padded
    d, i = merge_topk([np.array([[0.5, 9.0]]), np.array([[0.7, 0.1]])], [np.array([[4, -1]]), np.array([[2, 3]])],
                      5, larger_is_better=larger)
    assert i.tolist() == ([[2, 4, 3, -1, -1]] if larger else [[3, 4, 2, -1, -1]])
    assert np.isinf(d[0, 3:]).all() and (d[0, 3:] < 0).all() == larger


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_sharded_artifact_gives_the_same_top_k(tmp_path: Path, metric: str) -> None:
    x, q = clustered(1200, 24, seed=3), clustered(50, 24, seed=4)
    one = IndexArtifact.load(assemble(tmp_path / "one", x, metric=metric, rows_per_shard=500))
    cfg = IndexConfig(search_shards=3)
    three = IndexArtifact.load(assemble(tmp_path / "three", x, metric=metric, rows_per_shard=500, index_cfg=cfg))
    params = three.manifest.index_params
    assert [s["file"] for s in params["shards"]] == ["text-00000.faiss", "text-00001.faiss", "text-00002.faiss"]
    assert [(s["start"], s["stop"]) for s in params["shards"]] == [(0, 400), (400, 800), (800, 1200)]
    assert not (tmp_path / "three" / "text.faiss").exists() and three.search_info["shards"] == 3
    s1, i1 = one.search_text(q, 10)
    s3, i3 = three.search_text(q, 10)
    assert i1 == i3
    np.testing.assert_allclose(s1, s3, rtol=1e-5, atol=1e-5)
    assert (np.diff(s3, axis=1) <= 1e-6).all()  # best first, for both metric directions
    # a shard file that disagrees with the manifest is refused
    (tmp_path / "three" / "text-00001.faiss").unlink()
    with pytest.raises(ArtifactMismatch, match="text-00001.faiss"):
        IndexArtifact.load(tmp_path / "three")


def test_sharded_ivf_equals_one_ivf_with_the_same_training(tmp_path: Path) -> None:
    x, q = clustered(3000, 32, seed=5), clustered(40, 32, seed=6)
    base = dict(factory="IVF32,Flat", nprobe=4)
    one = IndexArtifact.load(assemble(tmp_path / "one", x, index_cfg=IndexConfig(**base)))
    two = IndexArtifact.load(assemble(tmp_path / "two", x, index_cfg=IndexConfig(**base, search_shards=2)))
    assert one.search_info["nprobe"] == 4 == two.search_info["nprobe"]
    assert one.search_text(q, 10)[1] == two.search_text(q, 10)[1]


# ----------------------------------------------------------------------------- parallel add, on disk
@pytest.mark.parametrize("factory", ["Flat", "IVF32_HNSW8,Flat", "IVF32,SQ8", "SQ8"])
def test_parallel_add_contract_equals_single_process(tmp_path: Path, factory: str) -> None:
    x, q = clustered(3000, 32, seed=7), clustered(40, 32, seed=8)
    cfg = IndexConfig(factory=factory, nprobe=6)
    single = IndexArtifact.load(assemble(tmp_path / "single", x, index_cfg=cfg))
    merged = IndexArtifact.load(assemble(tmp_path / "merged", x, index_cfg=cfg, parallel_add=sequential_add))
    assert merged.manifest.index_params["add"] == "parallel" and merged.manifest.index_params["merge"] == "in-memory"
    assert single.manifest.index_params["add"] == "single-process"
    assert merged.manifest.factory == factory == single.manifest.factory
    s1, i1 = single.search_text(q, 10)
    s2, i2 = merged.search_text(q, 10)
    assert i1 == i2
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
    # each entity finds itself (ids = positions survive the merge)
    _, top = merged.search_text(x[[0, 1500, 2999]], 1)
    assert top == [["E0"], ["E1500"], ["E2999"]]


def test_on_disk_ivf_merge(tmp_path: Path) -> None:
    x, q = clustered(3000, 32, seed=9), clustered(40, 32, seed=10)
    mem = IndexArtifact.load(assemble(tmp_path / "mem", x, index_cfg=IndexConfig(factory="IVF32,Flat", nprobe=5)))
    cfg = IndexConfig(factory="IVF32,Flat", nprobe=5, on_disk="always", search_shards=2)
    out = assemble(tmp_path / "disk", x, index_cfg=cfg, parallel_add=sequential_add)
    m = read_manifest(out)
    assert m.index_params["on_disk"] and m.index_params["merge"] == "on-disk"
    assert {"text-00000.ivfdata", "text-00001.ivfdata"} <= set(m.files)
    assert not (out / ".ondisk-parts").exists()
    disk = IndexArtifact.load(out)
    assert disk.search_text(q, 10)[1] == mem.search_text(q, 10)[1]
    # single-process on-disk (no parallel add): chunks merged on disk the same way
    solo = IndexArtifact.load(assemble(tmp_path / "solo", x, index_cfg=cfg.model_copy(update={"search_shards": 1})))
    assert (tmp_path / "solo" / "text.ivfdata").is_file() and solo.search_text(q, 10)[1] == mem.search_text(q, 10)[1]
    # the lists live in the .ivfdata files: a damaged one is refused by size
    with open(out / "text-00001.ivfdata", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactMismatch, match="text-00001.ivfdata"):
        IndexArtifact.load(out)


def test_nprobe_recorded_and_overridden_at_load(tmp_path: Path) -> None:
    x, q = clustered(3000, 32, seed=11), clustered(40, 32, seed=12)
    out = assemble(tmp_path / "ivf", x, index_cfg=IndexConfig(factory="IVF64_HNSW8,Flat"))
    m = read_manifest(out)
    assert m.factory == "IVF64_HNSW8,Flat" and m.index_params["nprobe"] == 8 and m.index_params["ef_search"] == 64
    art = IndexArtifact.load(out)
    assert art.search_info == {"factory": "IVF64_HNSW8,Flat", "shards": 1, "device": "cpu", "nprobe": 8,
                               "ef_search": 64}
    full = IndexArtifact.load(out, nprobe=64)
    assert full.search_info["nprobe"] == 64 and full.search_info["ef_search"] >= 64
    # probing every list is exact search
    exact = q @ x.T
    want = np.argsort(-exact, axis=1)[:, :10]
    assert full.search_text(q, 10)[1] == [[f"E{i}" for i in row] for row in want]


def test_build_faiss_auto_and_ivf_ids() -> None:
    import faiss

    x = clustered(2000, 16, seed=13)
    flat = build_faiss(x, np.arange(2000), "auto", "ip")
    assert isinstance(flat, faiss.IndexIDMap2) and flat.ntotal == 2000
    ivf = build_faiss(x, np.arange(5000, 7000), "IVF16,Flat", "l2")
    assert faiss.extract_index_ivf(ivf).nlist == 16 and not isinstance(ivf, faiss.IndexIDMap)
    assert ivf.search(x[:3], 1)[1][:, 0].tolist() == [5000, 5001, 5002]


def test_gpu_code_path_with_stand_in_converters(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the cpu<->gpu converters are replaced by stand-ins (identity) to check that the GPU path trains
    the same index as the CPU path (IVF k-means on the 'GPU' flat index) and falls back where faiss refuses."""
    import faiss

    from mel.index.faiss_ops import new_index, to_search_device, train_index, training_sample

    moved: list[str] = []

    def to_gpu(index):  # noqa: ANN001, ANN202
        moved.append(type(index).__name__)
        return index

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: index, raising=False)
    x, q = clustered(2000, 16, seed=14), clustered(20, 16, seed=15)
    for factory, trained_where in (("IVF16_HNSW8,Flat", "IndexFlatIP"), ("SQ8", "IndexIDMap2")):
        plan = choose_factory(len(x), 16, IndexConfig(factory=factory, nprobe=4))
        moved.clear()
        gpu_index, device = train_index(new_index(plan), training_sample(x, plan), plan, use_gpu=True)
        cpu_index, cpu_device = train_index(new_index(plan), training_sample(x, plan), plan, use_gpu=False)
        assert (device, cpu_device) == ("gpu", "cpu") and moved == [trained_where]
        for index in (gpu_index, cpu_index):
            index.add_with_ids(x, np.arange(len(x)))
        np.testing.assert_array_equal(gpu_index.search(q, 5)[1], cpu_index.search(q, 5)[1])
    assert to_search_device(cpu_index, True) == (cpu_index, "gpu") and to_search_device(cpu_index, False)[1] == "cpu"

    def refuse(index):  # noqa: ANN001, ANN202
        raise RuntimeError("not implemented for this index type")

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse, raising=False)
    assert to_search_device(cpu_index, True) == (cpu_index, "cpu")
    plan = choose_factory(len(x), 16, IndexConfig(factory="SQ8"))
    assert train_index(new_index(plan), x, plan, use_gpu=True)[1] == "cpu"  # training falls back too


def test_parallel_add_that_loses_a_shard_is_refused(tmp_path: Path) -> None:
    x = clustered(3000, 16, seed=16)

    def lossy(trained, files, ranges):  # noqa: ANN001, ANN202
        return sequential_add(trained, files[:-1], ranges)

    for cfg in (IndexConfig(factory="Flat"), IndexConfig(factory="IVF16,Flat", on_disk="always")):
        with pytest.raises(RuntimeError, match=r"holds 2000 vectors|results for 2 of 3"):
            assemble(tmp_path / "idx", x, index_cfg=cfg, parallel_add=lossy)
        assert not (tmp_path / "idx").exists()
