"""Per-mention LLM selection cost: in-process engine vs the Serve graph at concurrency 1, side by side in one run.

The same config (default ``configs/demo.yaml``), index and mentions: first the method's runner in this process
(``timings_ms["select"]`` per mention, one mention per call), then the Serve app on 127.0.0.1 with one request per
mention (the ``select`` timing the Selector deployment reports, and the request's wall time). The first
``--warmup`` mentions of each side are not counted. Writes ``bench/results/selection_latency.json``.

    python bench/bench_selection_latency.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--mentions", default=str(REPO / "data" / "demo" / "mentions.jsonl"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "selection_latency.json"))
    args = ap.parse_args(argv)

    import httpx

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.entrypoints import commands
    from mel.mentions import read_mentions
    from mel.methods import build_linker

    cfg = load_config(args.config, [*args.overrides, "nil.calibration=off"])
    mentions = list(read_mentions(args.mentions))[: args.n]
    work = Path(tempfile.mkdtemp(prefix="mel-bench-sel-"))
    index_dir = work / "index"
    commands.index(cfg, out=str(index_dir), kb=str(REPO / "data" / "demo" / "kb" / "entities.jsonl"), local=True)

    linker = build_linker(cfg, str(index_dir))
    local_ms = []
    for m in mentions:
        local_ms.append(linker.link([m])[0].timings_ms["select"])
    linker.shutdown()

    url = commands.start_serve(cfg, str(index_dir))
    serve_ms, wall_ms = [], []
    try:
        with httpx.Client(timeout=300) as client:
            for m in mentions:
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/link", json={"mentions": [{"id": m.id, "surface": m.surface,
                                                                       "context": m.context}]})
                wall_ms.append(1000 * (time.perf_counter() - t0))
                r.raise_for_status()
                serve_ms.append(r.json()["results"][0]["timings_ms"]["select"])
    finally:
        commands.stop_serve()

    w = args.warmup
    med_local, med_serve = statistics.median(local_ms[w:]), statistics.median(serve_ms[w:])
    result = {
        "config": str(Path(args.config).relative_to(REPO)) if Path(args.config).is_relative_to(REPO) else args.config,
        "overrides": args.overrides, "mentions": len(mentions), "warmup": w,
        "select_ms_median_in_process": round(med_local, 1),
        "select_ms_median_serve_c1": round(med_serve, 1),
        "request_ms_median_serve_c1": round(statistics.median(wall_ms[w:]), 1),
        "ratio_serve_over_in_process": round(med_serve / med_local, 3),
        "select_ms_in_process": [round(x, 1) for x in local_ms],
        "select_ms_serve_c1": [round(x, 1) for x in serve_ms],
        "command": "python bench/bench_selection_latency.py" + "".join(f" --set {o}" for o in args.overrides),
    }
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
