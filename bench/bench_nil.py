"""NIL figures under the withheld-gold protocol, for every registered method on both datasets.

For each dataset and method: ``mel calibrate`` on a fixed seeded dev sample with a fraction F of golds withheld
(link-confidence model + threshold, or the raw score with ``--raw``), then ``mel eval --nil-withhold F`` on a fixed
seeded test sample reading that calibration. Merges ``nil_*`` fields into the method's row of
``bench/results/accuracy.json``, writes the curves to ``bench/results/nil_curves.json`` and a PNG per row to
``docs/figures/``.

    python bench/bench_nil.py --datasets richpedia-mel wikimel --methods retrieval
    python bench/bench_nil.py --methods retrieval --label rerank --set retrieval.rerank.enabled=true
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


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    ap.add_argument("--methods", nargs="+", default=["retrieval"])
    ap.add_argument("--fraction", type=float, default=0.1, help="withheld fraction (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dev-sample", type=int, default=1000)
    ap.add_argument("--test-sample", type=int, default=1000)
    ap.add_argument("--raw", action="store_true", help="threshold the raw final score (no confidence model)")
    ap.add_argument("--config", help="config YAML")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--label", help="row key (default: the method name)")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "accuracy.json"))
    ap.add_argument("--curves", default=str(REPO / "bench" / "results" / "nil_curves.json"))
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.methods import build_linker
    from mel.plot import plot_nil_curve
    from mel.runner import Runner

    cfg = load_config(args.config, args.overrides)
    out, curves_path = Path(args.out), Path(args.curves)
    for ds in args.datasets:
        index_dir = Path(args.workdir) / f"index-{ds}"
        commands.ensure_dataset_index(cfg, load_dataset(ds), str(index_dir), None)
        for method in args.methods:
            label = args.label or method
            t0 = time.perf_counter()
            free = cfg.model_copy(update={"nil": cfg.nil.model_copy(
                update={"calibration": "off", "threshold": None, "confidence": None})})
            linker = build_linker(free, str(index_dir), method=method)
            cal_path = Path(args.workdir) / f"calibration-{ds}-{label}.json"
            cal, _ = commands.calibrate(cfg, dataset=ds, index_dir=str(index_dir), method=method,
                                        fraction=args.fraction, seed=args.seed, sample=args.dev_sample,
                                        out=str(cal_path), linker=linker, confidence=not args.raw)
            fig = Path(args.figures) / f"nil-{ds}-{label}.png"
            plot_nil_curve(cal, fig)
            calibrated = cfg.model_copy(update={"nil": cfg.nil.model_copy(update={"calibration": str(cal_path)})})
            runner = Runner(calibrated, linker.parts, method=method)
            report = commands.evaluate(calibrated, dataset=ds, split="test", index_dir=str(index_dir),
                                       method=method, linker=runner, sample=args.test_sample, seed=args.seed,
                                       nil_withhold=args.fraction)
            plain = commands.evaluate(free, dataset=ds, split="test", index_dir=str(index_dir), method=method,
                                      linker=linker, sample=args.test_sample, seed=args.seed)
            linker.shutdown()
            nil, acc, rank = report["nil"], report["accuracy"], report["ranking"]["in_kb_only"]
            entry = {
                "nil_precision": _r(nil["precision"]), "nil_recall": _r(nil["recall"]), "nil_f1": _r(nil["f1"]),
                "nil_accuracy": _r(acc["all_mentions"]),
                "nil_in_kb_accuracy": _r(acc["in_kb_only"]),
                "nil_in_kb_h1": _r(rank["hits@1"]),
                "nil_h1_without_withheld": _r(plain["ranking"]["all_mentions"]["hits@1"]),
                "nil_threshold": cal.threshold,
                "nil_score": "link confidence (logistic)" if cal.confidence else "raw final score",
                "nil_auc_dev": _r(cal.auc), "nil_auc_test": _r(nil["score_auc"]),
                "nil_raw_auc_dev": _r(cal.dev.get("raw_score_auc", cal.auc)),
                "nil_protocol": {"fraction": args.fraction, "seed": args.seed, "dev_sample": args.dev_sample,
                                 "test_sample": args.test_sample, "test_mentions": report["counts"]["mentions"],
                                 "test_nil_expected": report["counts"]["nil_expected"]},
                "nil_seconds": round(time.perf_counter() - t0, 1),
                "nil_command": f"python bench/bench_nil.py --datasets {ds} --methods {method}"
                + (f" --label {args.label}" if args.label else "") + (" --raw" if args.raw else "")
                + (f" --config {args.config}" if args.config else "")
                + f" --dev-sample {args.dev_sample} --test-sample {args.test_sample}"
                + "".join(f" --set {o}" for o in args.overrides),
                "nil_figure": f"docs/figures/{fig.name}",
            }
            results = json.loads(out.read_text()) if out.exists() else {}
            row = results.setdefault(ds, {}).setdefault(label, {"method": method})
            row.update(entry)
            write_text_atomic(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
            curves = json.loads(curves_path.read_text()) if curves_path.exists() else {}
            curves.setdefault(ds, {})[label] = {"threshold": cal.threshold, "auc": cal.auc, "dev": cal.dev,
                                                "confidence": cal.confidence, "curve": cal.curve}
            write_text_atomic(curves_path, json.dumps(curves, indent=1, sort_keys=True) + "\n")
            print(json.dumps({ds: {label: entry}}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
