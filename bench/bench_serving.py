"""Linking throughput and latency over HTTP (Ray Serve on 127.0.0.1) at several client concurrencies, against
calling the same pipeline in-process, in one run; where the latency goes; and what overload does.

Writes ``bench/results/serving.json``::

    {"in_process": {"rps", "p50_ms", "p99_ms", ...},
     "concurrency": {"1": {"rps", "p50_ms", "p99_ms", "requests", "errors",
                           "latency_ms": {mean per request: "client", "server_total", "models", "serve_hops",
                                          "ingress", "http"},
                           "latency_share": {"models", "serve_hops", "ingress", "http"}},
                     "4": ..., "16": ..., "64": ...},
     "overload": {"clients", "config", "answered", "ok", "rejected_503", "fraction_503", "other_status", "lost",
                  "answered_twice", "p50_ms_503", "p99_ms_503", "p50_ms_200", "with_retry_after", "wall_s"}}

Latency split (per request, from the ``timings_ms`` the ingress returns): ``models`` = retrieve (+ rerank) + select,
the compute time of the model batches the request ran in; ``serve_hops`` = retrieve_hop + select_hop, the rest of
the time the ingress waited on the Retriever / Selector handle calls (routing, (de)serialisation, replica queues
and the ``@serve.batch`` wait); ``ingress`` = server total - models - hops (parsing, decoding, NIL, JSON);
``http`` = client latency - server total (client, proxy and the proxy -> ingress hop).

The overload run redeploys the graph with small queue limits (``--overload-set``) and sends ``--overload-clients``
requests at once, each with its own ``X-Request-ID``; ``lost`` counts requests with no answer (client side) or no
ingress log line (server side), ``answered_twice`` request ids answered (logged by the ingress) more than once.

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
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

MODEL_KEYS = ("retrieve", "rerank", "select")
HOP_KEYS = ("retrieve_hop", "select_hop")
DEFAULT_OVERLOAD_SET = ["serve.retriever.max_queued_requests=8", "serve.selector.max_queued_requests=8"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summary(lat_ms: list[float], wall_s: float, errors: int = 0) -> dict[str, float]:
    return {"rps": round(len(lat_ms) / wall_s, 2), "p50_ms": round(statistics.median(lat_ms), 1),
            "p99_ms": round(pct(lat_ms, 99), 1), "requests": len(lat_ms), "errors": errors}


def latency_split(records: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """Mean per-request latency parts (ms) and their shares of the client latency, from (client ms, timings_ms)."""
    parts: dict[str, list[float]] = {k: [] for k in ("client", "server_total", "models", "serve_hops", "ingress",
                                                     "http")}
    for client_ms, t in records:
        total = t.get("total", 0.0)
        models = sum(t.get(k, 0.0) for k in MODEL_KEYS)
        hops = sum(t.get(k, 0.0) for k in HOP_KEYS)
        parts["client"].append(client_ms)
        parts["server_total"].append(total)
        parts["models"].append(models)
        parts["serve_hops"].append(hops)
        parts["ingress"].append(max(0.0, total - models - hops))
        parts["http"].append(max(0.0, client_ms - total))
    if not records:
        return {"latency_ms": {}, "latency_share": {}}
    means = {k: statistics.fmean(v) for k, v in parts.items()}
    share = {k: round(means[k] / means["client"], 3) for k in ("models", "serve_hops", "ingress", "http")}
    return {"latency_ms": {k: round(v, 1) for k, v in means.items()}, "latency_share": share}


async def http_level(url: str, bodies: list[dict], concurrency: int, timeout_s: float) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    records: list[tuple[float, dict[str, float]]] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(body: dict) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/link", json=body)
                ms = 1000 * (time.perf_counter() - t)
                if r.status_code != 200:
                    errors += 1
                    return
                lat.append(ms)
                records.append((ms, r.json()["results"][0]["timings_ms"]))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    return {**summary(lat, wall, errors), **latency_split(records)}


def ingress_log_counts(app_name: str, request_ids: set[str]) -> Counter:
    """How many times the ingress logged an answer ("link" lines) for each of ``request_ids``."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    seen: Counter = Counter()
    for f in logs.glob(f"replica_{app_name}_Ingress_*.log"):
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("stage") == "link" and rec.get("request_id") in request_ids:
                seen[rec["request_id"]] += 1
    return seen


async def overload_burst(url: str, bodies: list[dict], clients: int, timeout_s: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    rows: list[tuple[str, int | None, float, bool, str | None]] = []
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(i: int) -> None:
            rid = f"overload-{i}-{time.time_ns()}"
            t = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/link", json=bodies[i % len(bodies)], headers={"X-Request-ID": rid})
            except httpx.HTTPError:
                rows.append((rid, None, 1000 * (time.perf_counter() - t), False, None))
                return
            body_rid = r.json().get("request_id") if r.headers.get("content-type", "").startswith(
                "application/json") else None
            rows.append((rid, r.status_code, 1000 * (time.perf_counter() - t), "retry-after" in r.headers, body_rid))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"rows": rows, "wall_s": wall}


def overload_summary(rows: list[tuple[str, int | None, float, bool, str | None]], logged: Counter, clients: int,
                     wall_s: float) -> dict[str, Any]:
    codes = Counter(code for _, code, *_ in rows)
    lat503 = [ms for _, code, ms, *_ in rows if code == 503]
    lat200 = [ms for _, code, ms, *_ in rows if code == 200]
    no_answer = [rid for rid, code, *_ in rows if code is None]
    mismatched = [rid for rid, code, _, _, body_rid in rows if code is not None and body_rid not in (None, rid)]
    not_logged = [rid for rid, *_ in rows if logged[rid] == 0]
    return {
        "clients": clients, "answered": sum(1 for _, code, *_ in rows if code is not None), "ok": codes.get(200, 0),
        "rejected_503": codes.get(503, 0), "fraction_503": round(codes.get(503, 0) / max(1, clients), 3),
        "other_status": {str(k): v for k, v in codes.items() if k not in (200, 503)},
        "with_retry_after": sum(1 for _, code, _, ra, _ in rows if code == 503 and ra),
        "lost": len(set(no_answer) | set(not_logged) | set(mismatched)),
        "answered_twice": sum(1 for n in logged.values() if n > 1),
        "p50_ms_503": round(statistics.median(lat503), 1) if lat503 else None,
        "p99_ms_503": round(pct(lat503, 99), 1) if lat503 else None,
        "p50_ms_200": round(statistics.median(lat200), 1) if lat200 else None,
        "wall_s": round(wall_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia-mel")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level (one mention each)")
    ap.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--method", default="llm-select")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--overload-clients", type=int, default=256, help="requests sent at once in the overload run "
                    "(0: skip it)")
    ap.add_argument("--overload-set", action="append", default=None,
                    help=f"config overrides of the overload run's graph (default: {' '.join(DEFAULT_OVERLOAD_SET)})")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serving.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from ray import serve

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.runner import Runner

    cfg = load_config(args.config, args.overrides + [f"method={args.method}"])
    ds = load_dataset(args.dataset)
    index_dir = str(Path(args.workdir) / f"index-{args.dataset}")
    commands.ensure_dataset_index(cfg, ds, index_dir, None)
    mentions = ds.splits["test"][: args.requests]

    # In-process: the method runner (what `mel link` and `mel eval` run) called one mention at a time.
    linker = Runner.load(cfg, index_dir)
    linker.link(mentions[:4])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for m in mentions:
        t = time.perf_counter()
        linker.link([m])
        lat.append(1000 * (time.perf_counter() - t))
    in_process = summary(lat, time.perf_counter() - t0)
    print("in_process", in_process, flush=True)
    linker.shutdown()
    del linker

    url = commands.start_serve(cfg, index_dir)
    bodies = [{"mentions": [{"id": m.id, "surface": m.surface, "context": m.context}]} for m in mentions]
    levels: dict[str, Any] = {}
    overload: dict[str, Any] | None = None
    try:
        asyncio.run(http_level(url, bodies[:8], 4, 300))  # warm-up
        for c in args.levels:
            levels[str(c)] = asyncio.run(http_level(url, bodies, c, 600))
            print(c, levels[str(c)], flush=True)
        if args.overload_clients > 0:
            serve.delete(cfg.serve.app_name)  # one LLM engine at a time on this machine
            ov_set = args.overload_set if args.overload_set is not None else DEFAULT_OVERLOAD_SET
            ov_cfg = load_config(args.config, args.overrides + [f"method={args.method}"] + ov_set
                                 + [f"serve.app_name={cfg.serve.app_name}-overload"])
            ov_url = commands.start_serve(ov_cfg, index_dir)
            asyncio.run(http_level(ov_url, bodies[:8], 4, 300))  # warm-up
            burst = asyncio.run(overload_burst(ov_url, bodies, args.overload_clients, 600))
            time.sleep(3)  # let the replica log handlers flush
            logged = ingress_log_counts(ov_cfg.serve.app_name, {r[0] for r in burst["rows"]})
            overload = {**overload_summary(burst["rows"], logged, args.overload_clients, burst["wall_s"]),
                        "config": ov_set}
            print("overload", overload, flush=True)
    finally:
        commands.stop_serve()
    result: dict[str, Any] = {
        "dataset": args.dataset, "method": args.method, "in_process": in_process, "concurrency": levels,
        "http_over_in_process_rps": {c: round(v["rps"] / in_process["rps"], 2) for c, v in levels.items()},
        "command": "python bench/bench_serving.py " + " ".join(argv or sys.argv[1:])}
    if overload is not None:
        result["overload"] = overload
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
