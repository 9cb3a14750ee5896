"""Selector training on this machine (``mel train selector``): what it costs and what it buys.

Trains the LoRA selector on a seeded sample of a dataset's train split (hard mentions first) over the dataset's
index, and writes ``bench/results/selector_training.json``: the trainable share, examples, steps, examples/s,
wall time, the loss curve (mean per block of steps), and the LLM's accuracy on a fixed sample of the dev split
(mentions whose gold is among the options; options in retrieval order, and shuffled) before training, every
``eval_every`` steps and after, next to the retrieval's H@1 on the same dev mentions.

    python bench/bench_selector_training.py --dataset richpedia-mel --limit 800
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia-mel")
    ap.add_argument("--limit", type=int, default=800, help="training mentions (seeded sample, hard first)")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "selector_training.json"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.train.selector import train_selector

    cfg = load_config(args.config, args.overrides)
    cfg.train.selector.limit = args.limit
    index_dir = str(Path(args.workdir) / f"index-{args.dataset}")
    commands.ensure_dataset_index(cfg, load_dataset(args.dataset), index_dir, None)
    out = Path(args.workdir) / f"selector-{args.dataset}"
    t0 = time.perf_counter()
    rep = train_selector(cfg, index_dir=index_dir, out=str(out), dataset=args.dataset, split="train",
                         resume=args.resume, overwrite=True)
    wall = time.perf_counter() - t0
    losses = rep["losses"]
    block = max(1, len(losses) // 8)
    ev = rep.get("evaluation", {})
    result = {
        "dataset": args.dataset, "split": "train", "limit": args.limit,
        "examples": rep["examples"], "example_stats": rep["example_stats"], "steps": rep["steps"],
        "batch_size": rep["batch_size"], "rank": rep["rank"], "target_modules": rep["target_modules"], "lr": rep["lr"],
        "init_adapter": rep.get("init_adapter"),
        "schedule": rep.get("schedule"), "warmup_steps": rep.get("warmup_steps"), "eos_loss": rep.get("append_eos"),
        "trainable_params": rep["trainable_params"], "total_params": rep["total_params"],
        "trainable_share_pct": round(100 * rep["trainable_share"], 3),
        "train_seconds": rep["train_seconds"], "wall_seconds": round(wall, 1),
        "examples_per_s": round(rep["steps"] * rep["batch_size"] / max(rep["train_seconds"], 1e-9), 3),
        "prompt_tokens": rep["prompt_tokens"], "candidates": rep["selection"]["candidates"],
        "loss_by_block": [{"steps": f"{i + 1}-{min(i + block, len(losses))}",
                           "mean": round(sum(losses[i:i + block]) / len(losses[i:i + block]), 4)}
                          for i in range(0, len(losses), block)],
        "dev": rep["dev"],
        "dev_accuracy": {"before": ev.get("before"), "by_step": ev.get("by_step", {}), "after": ev.get("after")},
        "command": "python bench/bench_selector_training.py " + " ".join(argv or sys.argv[1:]),
        "machine": "2 CPU cores, fp32 training (torch CPU)",
    }
    print(json.dumps(result, indent=2), flush=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
