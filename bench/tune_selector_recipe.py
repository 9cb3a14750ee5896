"""Which LoRA recipe teaches the multiple-choice selector to read its options, within a CPU budget?

The candidates of a seeded pool of training mentions and of a fixed dev sample are computed once (the method's
steps before ``select``: retrieval + re-ranking), the training prompts are built once (options shuffled per
mention, as ``mel train selector`` does), and each recipe (a JSON object of ``save_lora_adapter`` settings) trains
from the same base on the same prompts. Each is scored on the dev prompts twice: options in retrieval order (as
served) and options shuffled (seeded). The shuffled figure is the one that says whether the adapter reads the
options: a position prior alone scores ~1/K there.

    python bench/tune_selector_recipe.py --dataset richpedia-mel --limit 240 \\
        --recipe '{"name": "qv-3e-4", "target_modules": ["q_proj", "v_proj"], "lr": 3e-4, "steps": 60}' \\
        --recipe '{"name": "qv-1e-3", "target_modules": ["q_proj", "v_proj"], "lr": 1e-3, "steps": 60}'

Results (appended per recipe as it finishes): ``bench/results/selector_recipes.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPE_KEYS = {"name", "rank", "alpha", "target_modules", "lr", "steps", "batch_size", "append_eos", "schedule",
               "warmup_steps", "dropout"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="richpedia-mel")
    ap.add_argument("--config", default=str(REPO / "configs" / "unimel.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--pool", type=int, default=1500, help="training mentions whose candidates are computed")
    ap.add_argument("--limit", type=int, default=240, help="training mentions (seeded, hard first)")
    ap.add_argument("--dev", type=int, default=100, help="dev mentions (fixed seeded sample)")
    ap.add_argument("--recipe", action="append", default=[], help="JSON object of training settings")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "selector_recipes.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipes = [json.loads(r) for r in args.recipe]
    for r in recipes:
        unknown = set(r) - RECIPE_KEYS
        if unknown or "name" not in r:
            ap.error(f"recipe {r}: needs a name; unknown keys {sorted(unknown)} (known: {sorted(RECIPE_KEYS)})")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.eval import fixed_sample
    from mel.models.sources import resolve_model
    from mel.train.lora import save_lora_adapter
    from mel.train.selector import (
        build_examples,
        candidates_before_selection,
        chat_formatter,
        dev_accuracy,
        pick_training_mentions,
    )

    cfg = load_config(args.config, args.overrides)
    ds = load_dataset(args.dataset)
    index_dir = str(Path(args.workdir) / f"index-{args.dataset}")
    commands.ensure_dataset_index(cfg, ds, index_dir, None)
    pool = fixed_sample(list(ds.splits["train"]), args.pool, 0)
    dev = fixed_sample(list(ds.splits["dev"]), args.dev, 0)
    t0 = time.perf_counter()
    cands, index = candidates_before_selection(cfg, index_dir, pool + dev)
    cand_s = time.perf_counter() - t0
    train_c, dev_c = cands[: len(pool)], cands[len(pool):]
    keep = pick_training_mentions(pool, train_c, args.limit, head=cfg.selection.candidates, seed=0, hard_first=True)
    kb_ids = {e.id for e in ds.kb}

    from transformers import AutoTokenizer

    base = resolve_model(cfg.models.llm.model, kind="llm", cache_dir=cfg.models.cache_path())
    fmt = chat_formatter(AutoTokenizer.from_pretrained(base))
    train, stats = build_examples([pool[i] for i in keep], [train_c[i] for i in keep], index.text, index.name,
                                  kb_ids, cfg.selection, fmt, shuffle=True, seed=0)
    dev_order, _ = build_examples(dev, dev_c, index.text, index.name, kb_ids, cfg.selection, fmt, shuffle=False,
                                  insert_gold=False)
    dev_shuf, _ = build_examples(dev, dev_c, index.text, index.name, kb_ids, cfg.selection, fmt, shuffle=True,
                                 seed=1, insert_gold=False)
    score = dev_accuracy(dev_order, dev_shuf)
    base_scores: dict[str, Any] = {}  # every recipe starts from the base model (LoRA B = 0): score it once

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        if "pending" in base_scores:
            return base_scores.pop("pending")
        res = score(model, tokenizer)
        scores = {"in_order": res["accuracy"], "shuffled": res["shuffled_accuracy"]}
        base_scores.setdefault("result", scores)
        return scores

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    entry = results.setdefault(args.dataset, {})
    entry.update({"pool": len(pool), "examples": len(train), "example_stats": stats, "dev_examples": len(dev_order),
                  "candidates": cfg.selection.candidates, "candidates_seconds": round(cand_s, 1),
                  "retrieval_h@1_on_dev_examples": round(100.0 * sum(e.gold_rank == 1 for e in dev_order)
                                                         / max(1, len(dev_order)), 2),
                  "machine": "2 CPU cores, fp32 training (torch CPU)"})
    runs = entry.setdefault("recipes", {})
    for r in recipes:
        if "result" in base_scores:  # the first call of this recipe is the "before" of an unchanged base model
            base_scores["pending"] = base_scores["result"]
        settings = {k: v for k, v in r.items() if k != "name"}
        with tempfile.TemporaryDirectory() as tmp:
            rep = save_lora_adapter(base, str(Path(tmp) / "adapter"), train_pairs=[(e.prompt, e.answer) for e in train],
                                    shuffle=True, seed=0, evaluate=evaluate, log_every=10, **settings)
        losses = rep["losses"]
        tail = losses[-max(1, len(losses) // 4):]
        runs[r["name"]] = {
            "settings": settings, "trainable_share_pct": round(100 * rep["trainable_share"], 3),
            "train_seconds": rep["train_seconds"],
            "examples_per_s": round(rep["steps"] * rep["batch_size"] / max(rep["train_seconds"], 1e-9), 3),
            "loss_first_quarter": round(sum(losses[: len(tail)]) / len(tail), 4),
            "loss_last_quarter": round(sum(tail) / len(tail), 4),
            "dev_before": rep["evaluation"]["before"], "dev_after": rep["evaluation"]["after"],
        }
        print(json.dumps({r["name"]: runs[r["name"]]}), flush=True)
        entry["command"] = "python bench/tune_selector_recipe.py " + " ".join(argv or sys.argv[1:])
        write_text_atomic(str(out), json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
