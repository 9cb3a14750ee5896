"""Indexing throughput: the Ray Data job (`run_index`, encoder actor pool) vs a plain single-process loop
(`run_index_local`) with the same model and batch size, in one run, on the RichpediaMEL KB.

Writes ``bench/results/indexing.json``:
``{"kb": "richpedia-mel", "entities": .., "workers": .., "ray_entities_per_s": .., "loop_entities_per_s": ..,
"ratio": .., "runs": [{"workers": 1, ...}, {"workers": 2, ...}]}`` (ratio = Ray throughput / loop
throughput; above 1: Ray is faster). The top-level figures are those of the largest worker count; ``runs``
holds one entry per worker count, all measured in the same process run. The loop runs twice (before and
after the Ray runs) and its median time is the baseline, so drift on a shared machine shows up.

    python bench/bench_indexing.py                      # full KB, 1 and 2 workers (the committed numbers)
    python bench/bench_indexing.py --limit 500 --workers 2   # quick check

Both timings include building the encoder (per actor for Ray) and writing the artifact; starting the
local Ray itself is timed separately (``ray_start_s``), since a cluster is already running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="data root holding richpedia-mel/ (default: $MEL_DATA_DIR or ../shared/data)")
    ap.add_argument("--limit", type=int, help="first N entities (quick checks; not for committed numbers)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="encoder actor counts to measure")
    ap.add_argument("--batch-size", type=int, help="rows per batch (default: pipelines.index.batch_size)")
    ap.add_argument("--config", help="config YAML")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench-indexing"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "indexing.json"))
    ap.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only

    import numpy as np

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.index import read_manifest
    from mel.kb.reader import write_kb
    from mel.raylocal import init_ray, shutdown_ray
    from pipelines.index import run_index, run_index_local

    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"pipelines.index.batch_size={args.batch_size}")
    cfg = load_config(args.config, overrides)
    if cfg.models.image_encoder.enabled:
        logging.info("the image encoder is enabled: timings include image embedding")

    ds = load_dataset("richpedia-mel", args.data_root)
    entities = ds.kb.entities[: args.limit] if args.limit else ds.kb.entities
    work = Path(args.workdir)
    kb_path = write_kb(entities, work / "kb.jsonl")
    n = len(entities)
    p = cfg.pipelines.index
    logging.info("benchmark: %d entities, workers %s, batch %d", n, args.workers, p.batch_size)

    def loop_once(tag: str) -> float:
        t0 = time.perf_counter()
        run_index_local(kb_path, work / f"index-loop-{tag}", cfg)
        return time.perf_counter() - t0

    loop_times = [loop_once("a")]
    t0 = time.perf_counter()
    init_ray(cfg.ray)
    ray_start_s = time.perf_counter() - t0
    ray_times: dict[int, float] = {}
    try:
        import ray

        cpus = ray.cluster_resources().get("CPU")
        for w in args.workers:
            wcfg = cfg.model_copy(update={"pipelines": cfg.pipelines.model_copy(update={
                "index": p.model_copy(update={"workers": w})})})
            t0 = time.perf_counter()
            run_index(kb_path, work / f"index-ray-{w}", wcfg, progress=not args.no_progress)
            ray_times[w] = time.perf_counter() - t0
    finally:
        shutdown_ray()
    loop_times.append(loop_once("b"))
    loop_s = float(np.median(loop_times))

    b = np.load(work / "index-loop-a" / "text.npy")
    max_diff = max(float(np.abs(np.load(work / f"index-ray-{w}" / "text.npy") - b).max()) for w in args.workers)
    runs = [{"workers": w, "ray_s": round(t, 2), "ray_entities_per_s": round(n / t, 2),
             "ratio": round(loop_s / t, 3)} for w, t in ray_times.items()]
    top = max(args.workers)
    m = read_manifest(work / f"index-ray-{top}")
    ray_s = ray_times[top]
    result = {
        "kb": "richpedia-mel",
        "entities": n,
        "workers": top,
        "ray_entities_per_s": round(n / ray_s, 2),
        "loop_entities_per_s": round(n / loop_s, 2),
        "ratio": round(loop_s / ray_s, 3),
        "runs": runs,
        "ray_s": round(ray_s, 2),
        "loop_s": round(loop_s, 2),
        "loop_s_each": [round(t, 2) for t in loop_times],
        "ray_start_s": round(ray_start_s, 2),
        "batch_size": p.batch_size,
        "cpus_per_worker": p.cpus_per_worker,
        "ray_cpus": cpus,
        "host_cpus": os.cpu_count(),
        "text_encoder": m.encoder_id,
        "image_encoder": m.image_encoder_id,
        "vectors_max_abs_diff": max_diff,
        "limit": args.limit,
        "python": platform.python_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if max_diff > 1e-4:
        logging.error("Ray and loop vectors differ (max abs diff %.2e)", max_diff)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if max_diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
