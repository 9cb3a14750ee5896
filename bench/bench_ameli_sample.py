"""AMELI on the generated AMELI-format family sample (:mod:`mel.datasets.ameli_families`): product lines sold in
variants that differ by one attribute, reviews that name it. Built so that attribute filtering matters.

The index embeds ``{name}. {description}`` (AMELI's candidate retrieval reads titles and descriptions; the
attributes go to the text stream and the filter), so retrieval alone cannot tell variants apart. Runs ``retrieval``,
``ameli``, ``ameli-no-nli`` and ``ameli-no-filter`` on the test split with ``configs/ameli.yaml`` and writes
``bench/results/ameli_sample.json``.

    python bench/bench_ameli_sample.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = ("retrieval", "ameli", "ameli-no-nli", "ameli-no-filter")
TEMPLATE = "index.entity_template='{name}. {description}'"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated sample")
    ap.add_argument("--config", default=str(REPO / "configs" / "ameli.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ameli_sample.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.datasets.ameli_families import write_ameli_families
    from mel.entrypoints import commands
    from mel.eval import evaluate
    from mel.methods import build_linker

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ameli-sample-") as tmp:
        write_ameli_families(tmp, seed=args.seed)
        ds = load_dataset("ameli", tmp)
        mentions = ds.split("test")
        index_dir = str(Path(tmp) / "index")
        parts = None
        for method in METHODS:
            cfg = load_config(args.config, [*args.overrides, TEMPLATE, f"method={method}"])
            commands.ensure_dataset_index(cfg, ds, index_dir, tmp)
            # models shared, the text stream's pair cache not (each row's mentions/s is its own)
            given = {} if parts is None else {"text_encoder": parts.text_encoder, "cross_encoder": parts.cross_encoder}
            linker = build_linker(cfg, index_dir, **{k: v for k, v in given.items() if v is not None})
            parts = linker.parts
            t0 = time.perf_counter()
            results = linker.link(mentions)
            secs = time.perf_counter() - t0
            rep = evaluate(mentions, results, ds.kb)
            rows[method] = {
                "hits@1": round(rep["ranking"]["all_mentions"]["hits@1"], 2),
                "mrr": round(rep["ranking"]["all_mentions"]["mrr"], 2),
                "accuracy": round(rep["accuracy"]["all_mentions"], 2),
                "accuracy_in_kb": round(rep["accuracy"]["in_kb_only"], 2),
                "hits@1_ci95": [round(x, 2) for x in rep["confidence"]["hits@1_all_mentions"]],
                "mentions_per_s": round(len(mentions) / secs, 1),
                **({"filter": rep["filter"]} if "filter" in rep else {}),
            }
            logging.info("%s: %s", method, rows[method])
        stats = {"entities": len(ds.kb), "test_mentions": len(mentions),
                 "test_nil": sum(m.gold is None for m in mentions)}
    out = {"dataset": "ameli-families (generated, mel/datasets/ameli_families.py)", "seed": args.seed, **stats,
           "index_entity_template": "{name}. {description}", "config": str(Path(args.config).relative_to(REPO))
           if Path(args.config).is_relative_to(REPO) else args.config, "overrides": args.overrides,
           "nil_threshold": None, "methods": rows,
           "command": "python bench/bench_ameli_sample.py" + "".join(f" --set {o}" for o in args.overrides)}
    write_text_atomic(Path(args.out), json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
