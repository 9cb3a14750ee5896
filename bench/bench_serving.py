"""Linking throughput and latency over HTTP (Ray Serve on 127.0.0.1) at several client concurrencies,
against calling the same pipeline in-process, in one run.

Writes ``bench/results/serving.json``:
``{"in_process": {"rps", "p50_ms", "p99_ms"}, "concurrency": {"1": {...}, "4": {...}, "16": {...}, "64": {...}}}``

    python bench/bench_serving.py --dataset richpedia-mel --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summary(lat_ms: list[float], wall_s: float, errors: int = 0) -> dict[str, float]:
    return {"rps": round(len(lat_ms) / wall_s, 2), "p50_ms": round(statistics.median(lat_ms), 1),
            "p99_ms": round(pct(lat_ms, 99), 1), "requests": len(lat_ms), "errors": errors}


async def http_level(url: str, bodies: list[dict], concurrency: int, timeout_s: float) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(body: dict) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/link", json=body)
                if r.status_code != 200:
                    errors += 1
                    return
                lat.append(1000 * (time.perf_counter() - t))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    return summary(lat, wall, errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia-mel")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level (one mention each)")
    ap.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--method", default="llm-select")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serving.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel import commands
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.methods import build_linker

    cfg = load_config(args.config, args.overrides + [f"method={args.method}"])
    ds = load_dataset(args.dataset)
    index_dir = str(Path(args.workdir) / f"index-{args.dataset}")
    commands.ensure_dataset_index(cfg, ds, index_dir, None)
    mentions = ds.splits["test"][: args.requests]

    # In-process: the same pipeline (method object) called one mention at a time.
    linker = build_linker(cfg, index_dir)
    linker.link(mentions[:4])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for m in mentions:
        t = time.perf_counter()
        linker.link([m])
        lat.append(1000 * (time.perf_counter() - t))
    in_process = summary(lat, time.perf_counter() - t0)
    print("in_process", in_process, flush=True)
    if linker.selector is not None:
        linker.selector.engine.shutdown()
    del linker

    url = commands.start_serve(cfg, index_dir)
    bodies = [{"mentions": [{"id": m.id, "surface": m.surface, "context": m.context}]} for m in mentions]
    levels = {}
    try:
        asyncio.run(http_level(url, bodies[:8], 4, 300))  # warm-up
        for c in args.levels:
            levels[str(c)] = asyncio.run(http_level(url, bodies, c, 600))
            print(c, levels[str(c)], flush=True)
    finally:
        commands.stop_serve()
    result = {"dataset": args.dataset, "method": args.method, "in_process": in_process, "concurrency": levels,
              "http_over_in_process_rps": {c: round(v["rps"] / in_process["rps"], 2) for c, v in levels.items()},
              "command": "python bench/bench_serving.py " + " ".join(argv or sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
