"""`mel augment entities` throughput: the Ray Data job (vLLM engine actors) against a plain loop over the same
engine settings in this process, in one run, on a seeded sample of a dataset's KB.

Each side summarises two sample sizes into fresh artifacts; the marginal rate ``(n_large - n_small) /
(t_large - t_small)`` is the steady generation rate with the engine start-up (per actor for Ray) taken out, and
the wall time of the large run is reported too. The loop is :class:`mel.augment.entity.LocalSummariser` with
``augment.entities.batch_size`` prompts per ``generate`` call (``--loop-batch 1`` gives the one-at-a-time loop a
research script would write). Projections for whole KBs (here, at the measured rate) are written beside them.

    python bench/bench_augment.py --dataset richpedia-mel --small 16 --large 64

Results: ``bench/results/augment.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROJECT_FOR = ("richpedia-mel", "wikimel")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia-mel")
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--large", type=int, default=64)
    ap.add_argument("--loop-batch", type=int, help="prompts per generate call in the loop (default: the config's)")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "augment.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.eval import fixed_sample
    from mel.kb.model import KB
    from mel.llm import build_llm_engine
    from mel.raylocal import init_ray, shutdown_ray
    from pipelines.augment import run_summaries
    from pipelines.common import model_cache_dir

    cfg = load_config(args.config, args.overrides)
    ds = load_dataset(args.dataset)
    sample = fixed_sample(list(ds.kb.entities), args.large, 0)  # nested: the small run is a prefix
    kbs = {n: KB(sample[:n]) for n in (args.small, args.large)}
    work = Path(tempfile.mkdtemp(prefix="mel-bench-augment-"))
    res: dict = {"dataset": args.dataset, "sizes": [args.small, args.large], "llm": cfg.models.llm.model,
                 "max_tokens": cfg.augment.entities.max_tokens, "batch_size": cfg.augment.entities.batch_size,
                 "machine": "2 CPU cores, vLLM CPU", "runs": {}}
    try:
        loop_cfg = cfg
        if args.loop_batch is not None:
            loop_cfg = load_config(args.config, [*args.overrides, f"augment.entities.batch_size={args.loop_batch}"])
        t0 = time.perf_counter()
        engine = build_llm_engine(cfg.models.llm, model_cache_dir(cfg))
        res["loop_engine_start_s"] = round(time.perf_counter() - t0, 1)
        loop: dict = {}
        for n, kb in kbs.items():
            t = time.perf_counter()
            rep = run_summaries(kb, work / f"loop-{n}", loop_cfg, engine=engine)
            loop[n] = {"seconds": round(time.perf_counter() - t, 2), "generated": rep.generated}
        engine.shutdown()
        del engine
        res["runs"]["loop"] = loop
        init_ray(cfg.ray)
        ray_runs: dict = {}
        for n, kb in kbs.items():
            t = time.perf_counter()
            rep = run_summaries(kb, work / f"ray-{n}", cfg, progress=False)
            ray_runs[n] = {"seconds": round(time.perf_counter() - t, 2), "generated": rep.generated}
        res["runs"]["ray"] = ray_runs
        shutdown_ray()
        res["examples"] = _first_summaries(work / f"ray-{args.large}", 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, big = args.small, args.large
    for side in ("loop", "ray"):
        r = res["runs"][side]
        rate = (big - s) / max(1e-9, r[big]["seconds"] - r[s]["seconds"])
        res[f"{side}_entities_per_s"] = round(rate, 3)
        res[f"{side}_wall_s_{big}"] = r[big]["seconds"]
    res["ray_over_loop"] = round(res["ray_entities_per_s"] / max(1e-9, res["loop_entities_per_s"]), 3)
    sizes = {k: len(load_dataset(k).kb) for k in PROJECT_FOR}
    res["kb_entities"] = sizes
    res["projected_hours_here"] = {k: round(v / res["ray_entities_per_s"] / 3600, 2) for k, v in sizes.items()}
    res["command"] = "python bench/bench_augment.py " + " ".join(argv or sys.argv[1:])
    print(json.dumps(res, indent=2), flush=True)
    write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")
    return 0


def _first_summaries(path: Path, n: int) -> list[dict[str, str]]:
    from mel.augment.entity import SUMMARIES
    from mel.augment.store import read_artifact

    _, cols = read_artifact(path, SUMMARIES)
    return [{"entity_id": cols["entity_id"][i], "summary": cols["summary"][i]} for i in range(min(n, len(cols["key"])))]


if __name__ == "__main__":
    raise SystemExit(main())
