"""Index at scale: build time, peak memory, index size, recall@10 against exact search and queries/s of each
faiss index type, at several KB sizes, on synthetic vectors shaped like MiniLM's (dim 384, unit norm, inner
product) drawn from a Gaussian mixture (clustered, not uniform noise).

Writes ``bench/results/index_scale.json``::

    {"runs": [{"entities": .., "type": "ivf_hnsw_pq", "index": "<factory string>", "build_s": ..,
               "build_cpu_s": .., "peak_rss_mb": .., "data_rss_mb": .., "index_mb": .., "recall@10": ..,
               "recall_queries": .., "qps": .., "qps_threads": .., "threads": .., "nlist": .., "nprobe": ..,
               "ef_search": .., "train_size": .., ...}, ...],
     "growth": {"<type>": {"entities": [..], "build_s": [..], ...}}, ...}

``recall@10`` is the fraction of exact search's top 10 (Flat inner product over the same vectors) found in the
index's top 10, averaged over held-out queries drawn from the same mixture (``recall_queries`` of them: the
all-threads search that measures it stops after ``--search-seconds``, at least 100 queries; its rate is
``qps_threads``). ``qps`` is measured with ONE faiss thread (batches of 100 queries, at most ``--qps-seconds``).
Every build runs in a fresh subprocess, so ``peak_rss_mb`` (its VmHWM) is that build's alone; it includes the
input vectors, whose share is ``data_rss_mb`` (RSS once they are loaded). ``index_mb`` is the serialized size;
``build_cpu_s`` the CPU time of the build (robust when other work competes for the cores, unlike ``build_s``).
Build = the project's code path (``mel.index.build.build_faiss`` with a ``choose_factory`` plan: seeded training
sample, add_with_ids in chunks); nlist = 4*sqrt(n) to a power of two and nprobe = nlist/64 (8..256) unless
``--nprobe``. The ``auto`` row builds through ``mel.index.faiss_ops.write_text_index`` with ``index.factory:
auto`` and default knobs, as ``mel index`` does. Workers run with OMP_WAIT_POLICY=PASSIVE unless it is set
(spinning OpenMP threads slow faiss down several times on a shared machine).

    python bench/bench_index_scale.py --sizes 100000 1000000 --out bench/results/index_scale.json
    python bench/bench_index_scale.py --sizes 20000 --out /tmp/index_scale.json        # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TYPES = ("flat", "ivf_hnsw_flat", "ivf_hnsw_pq", "sq8", "ivf_hnsw_sq8", "auto")
K = 10


# ----------------------------------------------------------------------------- data
def mixture(dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm component centres and unequal component weights (Dirichlet), fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres, rng.dirichlet(np.full(clusters, 2.0))


def gaussian_mixture(n: int, centres: np.ndarray, weights: np.ndarray, seed: int, *, spread: float = 0.8,
                     chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors: a component drawn by weight, plus isotropic noise of norm ~``spread``, normalised.
    Generated in float32 chunks to bound memory."""
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    draw = np.random.default_rng(seed)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        z = draw.choice(len(centres), size=m, p=weights)
        x = centres[z] + draw.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[a:a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


# ----------------------------------------------------------------------------- one build (subprocess)
def factory_for(kind: str, n: int, dim: int, pq_m: int, hnsw_m: int) -> str:
    from mel.index.faiss_plan import auto_nlist, pq_sub_quantizers

    nlist = auto_nlist(n)
    return {"flat": "Flat", "ivf_hnsw_flat": f"IVF{nlist}_HNSW{hnsw_m},Flat",
            "ivf_hnsw_pq": f"IVF{nlist}_HNSW{hnsw_m},PQ{pq_sub_quantizers(dim, pq_m)}", "sq8": "SQ8",
            "ivf_hnsw_sq8": f"IVF{nlist}_HNSW{hnsw_m},SQ8", "auto": "auto"}[kind]


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB (/proc/self/status; ru_maxrss where it is missing)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    now = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return now, peak


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one index in this (fresh) process and measure it."""
    import faiss

    from mel.config import IndexConfig
    from mel.index.build import build_faiss
    from mel.index.faiss_ops import read_text_index, search_params, set_search_params
    from mel.index.faiss_plan import choose_factory

    threads = faiss.omp_get_max_threads()
    x = np.load(spec["data"])
    q = np.load(spec["queries"])
    gt = np.load(spec["truth"])
    data_rss, _ = memory_mb()
    n, dim = x.shape
    work = Path(spec["workdir"]) / f"run-{spec['type']}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t0, c0 = time.perf_counter(), cpu_s()
        if spec["type"] == "auto":  # the `mel index` path: factory 'auto', default knobs, files written
            from mel.index.faiss_ops import write_text_index

            factory, params = write_text_index(work, x, "auto", "ip", index_cfg=IndexConfig())
            build_s, build_cpu = time.perf_counter() - t0, cpu_s() - c0
            index = read_text_index(work / params["shards"][0]["file"], on_disk=bool(params["on_disk"]))
            set_search_params(index, nprobe=params["nprobe"], ef_search=params["ef_search"])
            index_bytes = sum(f.stat().st_size for f in work.iterdir())
        else:
            cfg = IndexConfig(factory=spec["factory"], nprobe=spec.get("nprobe"))
            plan = choose_factory(n, dim, cfg)
            index = build_faiss(x, np.arange(n), plan.factory, "ip", plan=plan)
            build_s, build_cpu = time.perf_counter() - t0, cpu_s() - c0
            factory, params = plan.factory, plan.params()
            faiss.write_index(index, str(work / "index.faiss"))
            index_bytes = (work / "index.faiss").stat().st_size
        _, peak_build = memory_mb()
        del x
        # recall and throughput with all threads: batches of 100 queries, at most search_seconds (>= 100 queries)
        ids, qps_threads = search_timed(index, q, spec["search_seconds"])
        recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ids, gt)]))
        faiss.omp_set_num_threads(1)
        qps = measure_qps(index, q, spec["qps_seconds"])
        faiss.omp_set_num_threads(threads)
        in_effect = search_params(index)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "entities": n, "type": spec["type"], "index": factory, "build_s": round(build_s, 3),
        "build_cpu_s": round(build_cpu, 2), "peak_rss_mb": round(max(peak_build, memory_mb()[1]), 1),
        "data_rss_mb": round(data_rss, 1),
        "index_mb": round(index_bytes / 2**20, 2), "recall@10": round(recall, 4), "qps": round(qps, 1),
        "qps_threads": round(qps_threads, 1), "threads": threads, "recall_queries": len(ids),
        "nlist": params.get("nlist"), "nprobe": in_effect.get("nprobe", params.get("nprobe")),
        "ef_search": in_effect.get("ef_search", params.get("ef_search")), "hnsw_m": params.get("hnsw_m"),
        "pq_m": params.get("pq_m"), "train_size": params.get("train_size"), "chosen_by": params.get("chosen_by"),
    }


def search_timed(index: Any, q: np.ndarray, max_seconds: float, batch: int = 100) -> tuple[np.ndarray, float]:
    """Top-10 ids of the queries searched within ``max_seconds`` (at least one batch), and queries/s."""
    out, t0 = [], time.perf_counter()
    for a in range(0, len(q), batch):
        out.append(index.search(q[a:a + batch], K)[1])
        if time.perf_counter() - t0 > max_seconds:
            break
    ids = np.concatenate(out)
    return ids, len(ids) / (time.perf_counter() - t0)


def measure_qps(index: Any, q: np.ndarray, max_seconds: float, batch: int = 100) -> float:
    """Queries/s searching ``q`` in batches of ``batch`` (top 10), stopping after ``max_seconds``."""
    done, t0 = 0, time.perf_counter()
    while done < len(q):
        index.search(q[done:done + batch], K)
        done += len(q[done:done + batch])
        if time.perf_counter() - t0 > max_seconds:
            break
    return done / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="KB sizes (vectors)")
    ap.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES, help="index types to build")
    ap.add_argument("--dim", type=int, default=384, help="vector dimension (MiniLM: 384)")
    ap.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture components")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries")
    ap.add_argument("--pq-m", type=int, default=48, help="PQ sub-quantizers of the IVF-PQ row")
    ap.add_argument("--hnsw-m", type=int, default=32, help="HNSW M of the coarse quantizers")
    ap.add_argument("--nprobe", type=int, help="IVF nprobe for every IVF row (default: the plan's nlist/64, "
                    "8..256; recorded per row)")
    ap.add_argument("--qps-seconds", type=float, default=10.0, help="time limit of the single-thread throughput "
                    "measurement")
    ap.add_argument("--search-seconds", type=float, default=60.0, help="time limit of the all-threads search that "
                    "measures recall (at least 100 queries; the number used is recorded as recall_queries)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="scratch directory for the vectors (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "index_scale.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one build, spec as JSON
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))), flush=True)
        return 0

    import faiss

    from mel.atomic import write_text_atomic

    t_all = time.perf_counter()
    own = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mel-index-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    # libgomp spins while waiting by default; on a machine shared with other work that wastes the cores
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        centres, weights = mixture(args.dim, args.clusters, args.seed)
        # held-out queries: their own draws from the same mixture (seeds differ from every data draw)
        queries = gaussian_mixture(args.queries, centres, weights, args.seed + 104_729)
        qpath = workdir / "queries.npy"
        np.save(qpath, queries)
        for n in args.sizes:
            t = time.perf_counter()
            x = gaussian_mixture(n, centres, weights, args.seed + 1 + n)
            dpath, tpath = workdir / f"data-{n}.npy", workdir / f"truth-{n}.npy"
            np.save(dpath, x)
            np.save(tpath, exact_top_k(x, queries, K))
            del x
            print(f"[{n}] data + exact top-{K} in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
            for kind in args.types:
                spec = {"type": kind, "factory": factory_for(kind, n, args.dim, args.pq_m, args.hnsw_m),
                        "nprobe": args.nprobe, "data": str(dpath), "queries": str(qpath), "truth": str(tpath),
                        "workdir": str(workdir), "qps_seconds": args.qps_seconds,
                        "search_seconds": args.search_seconds}
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                      text=True, check=False, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{kind} at {n}: the build process failed:\n{proc.stderr[-4000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["wall_s"] = round(time.perf_counter() - t, 1)
                runs.append(row)
                print(f"[{n}] {kind:14s} {row['index']:24s} build {row['build_s']:8.1f}s  rss {row['peak_rss_mb']:8.0f}"
                      f"MB  size {row['index_mb']:8.1f}MB  recall@10 {row['recall@10']:.3f}  qps {row['qps']:9.1f} "
                      f"(x{row['threads']} threads: {row['qps_threads']:.1f})", file=sys.stderr, flush=True)
            (workdir / f"data-{n}.npy").unlink()
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "runs": runs,
        "growth": growth(runs),
        "dim": args.dim, "metric": "ip", "clusters": args.clusters, "queries": args.queries, "k": K,
        "pq_m": args.pq_m, "hnsw_m": args.hnsw_m, "nprobe": args.nprobe or "auto (nlist/64, 8..256)",
        "qps_seconds": args.qps_seconds, "search_seconds": args.search_seconds,
        "omp_wait_policy": env["OMP_WAIT_POLICY"], "host_cpus": os.cpu_count(), "faiss": faiss.__version__,
        "python": platform.python_version(), "total_s": round(time.perf_counter() - t_all, 1),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['total_s']}s", file=sys.stderr)
    return 0


def growth(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Per index type, each measure listed by KB size (how it grows with the KB)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for r in sorted(runs, key=lambda r: r["entities"]):
        g = out.setdefault(r["type"], {k: [] for k in ("entities", "index", "build_s", "peak_rss_mb", "index_mb",
                                                       "recall@10", "qps")})
        for k in g:
            g[k].append(r[k])
    return out


if __name__ == "__main__":
    sys.exit(main())
