"""Tune AMELI's fusion on a dev split: ``final = p * incoming + (1 - p) * text`` (``ameli.fusion.prior_weight``) and
the text stream's aggregation of its statement scores (``ameli.text.aggregation``: mean or max).

The steps run once per dev mention and aggregation (the text stream's pair scores are cached, so the second
aggregation costs nothing); every ``p`` and filter on/off is then scored offline on the candidates' kept scores
(``scores["incoming"]``, ``scores["entail"]``, ``scores["filtered"]``) by the very fusion the ``fuse`` step runs.
Writes ``bench/results/ameli_tuning.json``: the sweep (H@1 per setting) and the best setting per dataset, which the
accuracy rows use via ``--set``.

    python bench/tune_ameli.py --datasets richpedia-mel wikimel --sample 300
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

from mel.ameli.fusion import fuse  # noqa: E402  (after the sys.path insert)
from mel.atomic import write_text_atomic  # noqa: E402
from mel.types import Candidate  # noqa: E402

PRIOR_WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
AGGREGATIONS = ("mean", "max")


def h_at_1(rows: list[tuple[str | None, list[Candidate]]], head: int, p: float, filtered: bool) -> float:
    """rows: (gold, candidates as the ``ameli`` method returned them) -> H@1 in percent, re-fused with prior weight
    ``p``, with the filter's decisions kept (``filtered``) or undone."""
    hits = 0
    for gold, cands in rows:
        cs = sorted(cands, key=lambda c: -c.scores.get("incoming", c.score))  # the order the fuse step was given
        if not filtered:
            cs = [Candidate(c.entity_id, c.name, c.score, {k: v for k, v in c.scores.items() if k != "filtered"})
                  for c in cs]
        fused = fuse(cs, head, lam=1.0, prior_weight=p)
        hits += bool(fused) and fused[0].entity_id == gold
    return round(100.0 * hits / max(1, len(rows)), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--sample", type=int, default=300, help="the evaluator's fixed seeded sample of N dev mentions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(REPO / "configs" / "ameli.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ameli_tuning.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.eval import fixed_sample
    from mel.methods import build_linker
    from mel.runner import Runner

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for ds_name in args.datasets:
        ds = load_dataset(ds_name)
        index_dir = str(Path(args.workdir) / f"index-{ds_name}")
        base = load_config(args.config, args.overrides + ["method=ameli"])
        commands.ensure_dataset_index(base, ds, index_dir, None)
        mentions = fixed_sample(ds.split(args.split), args.sample, args.seed)
        head = base.ameli.text.candidates
        runner = None
        sweep: dict[str, dict[str, float]] = {}
        seconds: dict[str, float] = {}
        for agg in AGGREGATIONS:
            cfg = load_config(args.config, args.overrides + ["method=ameli", f"ameli.text.aggregation={agg}"])
            runner = build_linker(cfg, index_dir) if runner is None else Runner(cfg, runner.parts, method="ameli")
            t0 = time.perf_counter()
            rows = []
            for i in range(0, len(mentions), 64):
                batch = mentions[i:i + 64]
                rows += [(m.gold, r.candidates) for m, r in zip(batch, runner.link(batch, k=cfg.retrieval.top_k))]
            seconds[agg] = round(time.perf_counter() - t0, 1)
            for filt in (True, False):
                for p in PRIOR_WEIGHTS:
                    sweep[f"{agg}/filter={'on' if filt else 'off'}/p={p}"] = h_at_1(rows, head, p, filt)
        best = {}
        for filt in ("on", "off"):
            # highest dev H@1; ties go to the smaller p (more weight on the text stream), then mean before max
            keys = [k for k in sweep if f"/filter={filt}/" in k]
            key = max(keys, key=lambda k: (sweep[k], -float(k.rsplit("=", 1)[1]), k.startswith("mean")))
            agg, _, p = key.split("/")
            best[f"filter_{filt}"] = {"aggregation": agg, "prior_weight": float(p.split("=")[1]),
                                      "dev_hits@1": sweep[key]}
        results[ds_name] = {
            "split": args.split, "sample": args.sample, "seed": args.seed, "head": head,
            "text_scorer": runner.parts.nli.id if runner is not None and runner.parts.nli is not None else None,
            "no_text_stream_hits@1": {f: sweep[f"mean/filter={f}/p=1.0"] for f in ("on", "off")},
            "best": best, "sweep": sweep, "seconds": seconds,
            "command": "python bench/tune_ameli.py --datasets " + ds_name + f" --sample {args.sample}"
            + "".join(f" --set {o}" for o in args.overrides),
        }
        logging.info("%s: best %s", ds_name, best)
        write_text_atomic(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
