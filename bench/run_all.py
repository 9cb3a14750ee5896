"""Run every benchmark in sequence (they share 2 cores: never in parallel) and render docs/benchmarks.md.

    python bench/run_all.py [--skip tune,accuracy,indexing,scale,serving]

The selector's fusion weight for the accuracy runs is the one tuned on the dev split
(bench/results/selection_tuning.json), per dataset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([PY, *args], cwd=REPO, check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", default="",
                    help="comma-separated steps to skip: tune,accuracy,indexing,scale,serving,augment")
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "tune" not in skip:
        run("bench/tune_selection.py", "--datasets", *args.datasets, "--limit", "500")
    if "accuracy" not in skip:
        run("bench/bench_accuracy.py", "--datasets", *args.datasets, "--methods", "retrieval")
        tuning = json.loads((REPO / "bench/results/selection_tuning.json").read_text())
        for ds in args.datasets:
            w = tuning[ds]["best_weight"]
            run("bench/bench_accuracy.py", "--datasets", ds, "--methods", "llm-select",
                "--set", f"selection.fusion_weight={w}")
    if "indexing" not in skip:
        run("bench/bench_indexing.py")
    if "scale" not in skip:
        run("bench/bench_index_scale.py", "--sizes", "100000", "1000000")
    if "serving" not in skip:
        run("bench/bench_serving.py", "--dataset", "richpedia-mel", "--requests", "200")
    if "augment" not in skip:
        run("bench/bench_augment.py", "--dataset", "richpedia-mel", "--small", "32", "--large", "192")
    run("bench/report.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
