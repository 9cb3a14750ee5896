"""Tune the selector's fusion weight on a dev split: ``final = (1-w)*incoming + w*P_llm(option)``, where the
incoming score is the retrieval score, or the re-ranked one when ``retrieval.rerank`` is on (``--method unimel``).

The LLM is run once per dev mention (``w`` does not change the prompt); H@1 is then computed for every
``w`` on the cached scores. Writes ``bench/results/selection_tuning.json`` with the sweep and the best
weight per dataset, which ``bench_accuracy.py`` runs use via ``--set selection.fusion_weight=W``.

    python bench/tune_selection.py --datasets richpedia-mel wikimel --limit 500
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

from mel.atomic import write_text_atomic  # noqa: E402  (after the sys.path insert)
from mel.stages.select import fuse  # noqa: E402

WEIGHTS = [round(0.05 * i, 2) for i in range(21)]


def h_at_1(rows: list[tuple[str | None, list[tuple[str, float, float | None]]]], w: float) -> float:
    """rows: (gold, [(entity_id, retrieval score, llm prob or None)]) -> H@1 in percent."""
    hits = 0
    for gold, cands in rows:
        best = max(cands, key=lambda c: fuse(c[1], c[2] or 0.0, w)) if cands else None
        hits += best is not None and best[0] == gold
    return 100.0 * hits / max(1, len(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=500, help="first N dev mentions (ignored with --sample)")
    ap.add_argument("--sample", type=int, help="the evaluator's fixed seeded sample of N dev mentions instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="llm-select", help="a method with a select step (llm-select, unimel)")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "selection_tuning.json"))
    ap.add_argument("--label", help="key of the result (default: the dataset name), e.g. 'richpedia-mel-lora'")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.methods import build_linker

    cfg = load_config(args.config, args.overrides + ["selection.fusion_weight=1.0", f"method={args.method}"])
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    engine = None
    for name in args.datasets:
        ds = load_dataset(name)
        index_dir = str(Path(args.workdir) / f"index-{name}")
        commands.ensure_dataset_index(cfg, ds, index_dir, None)
        linker = build_linker(cfg, index_dir, engine=engine)
        engine = linker.parts.engine  # share one engine across datasets
        from mel.eval import fixed_sample

        mentions = (fixed_sample(ds.splits[args.split], args.sample, args.seed) if args.sample
                    else ds.splits[args.split][: args.limit])
        t0 = time.perf_counter()
        res = commands.link_in_batches(linker, mentions, 32)
        secs = time.perf_counter() - t0
        rows = [(m.gold, [(c.entity_id, c.scores.get("pre_select", c.scores.get("retrieval", c.score)),
                           c.scores.get("llm")) for c in r.candidates])
                for m, r in zip(mentions, res)]
        sweep = {str(w): round(h_at_1(rows, w), 2) for w in WEIGHTS}
        best_w = max(WEIGHTS, key=lambda w: (sweep[str(w)], -w))  # ties: the smaller weight
        key = args.label or name
        results[key] = {"dataset": name, "split": args.split, "mentions": len(mentions), "h@1_by_weight": sweep,
                        "best_weight": best_w, "retrieval_h@1": sweep["0.0"], "llm_only_h@1": sweep["1.0"],
                        "llm_seconds": round(secs, 1), "candidates_shown": cfg.selection.candidates,
                        "llm": cfg.models.llm.model, "dtype": cfg.models.llm.dtype, "method": args.method,
                        "rerank": cfg.retrieval.rerank.enabled, "sample": args.sample, "seed": args.seed,
                        "adapter": linker.default_adapter,
                        "command": "python bench/tune_selection.py " + " ".join(argv or sys.argv[1:])}
        print(json.dumps({key: results[key]}, indent=1), flush=True)
        write_text_atomic(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    if engine is not None:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
