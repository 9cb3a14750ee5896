"""AMELI on the generated AMELI-format family sample (:mod:`mel.datasets.ameli_families`): product lines sold in
variants that differ by one attribute, reviews that name it. Built so that attribute filtering matters.

The index embeds ``{name}. {description}`` (AMELI's candidate retrieval reads titles and descriptions; the
attributes go to the text stream and the filter), so retrieval alone cannot tell variants apart. Runs ``retrieval``,
``ameli``, ``ameli-no-nli`` and ``ameli-no-filter`` on the test split with ``configs/ameli.yaml``; then, on the
same sample with photos (colour variants have photos of their colour), ``ameli`` with the image stream: a tiny
random open_clip model (no CLIP weights can be had here), the residual adapter trained on the train split, lambda
and the prior weight tuned on dev. Writes ``bench/results/ameli_sample.json``.

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
# No CLIP weights can be had here: the image rows use a tiny randomly initialised open_clip model (seeded), which
# still maps similar colours to similar embeddings; real checkpoints go through the same code.
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
LAMBDAS = [0.0, 0.25, 0.5, 0.75, 1.0]
PRIORS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
ADAPTER_STEPS = 60
UNNAMED_SHARE = 0.5


def _row(rep: dict, n: int, secs: float) -> dict:
    return {
        "hits@1": round(rep["ranking"]["all_mentions"]["hits@1"], 2),
        "mrr": round(rep["ranking"]["all_mentions"]["mrr"], 2),
        "accuracy": round(rep["accuracy"]["all_mentions"], 2),
        "accuracy_in_kb": round(rep["accuracy"]["in_kb_only"], 2),
        "hits@1_ci95": [round(x, 2) for x in rep["confidence"]["hits@1_all_mentions"]],
        "mentions_per_s": round(n / secs, 1),
        **({"filter": rep["filter"]} if "filter" in rep else {}),
    }


def image_rows(args: argparse.Namespace, parts) -> dict:  # noqa: ANN001
    """The sample with photos: index with the tiny CLIP, adapter trained on train, lambda and p tuned on dev (offline
    re-fusion of the candidates' kept scores), then test, with and without the adapter."""
    import torch

    from mel.ameli.fusion import fuse
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.datasets.ameli_families import write_ameli_families
    from mel.encoders.image import OpenClipImageEncoder
    from mel.eval import evaluate
    from mel.runner import Runner
    from mel.train.clip_adapter import collect_image_pairs, embed_pairs, frozen_parameter_count, train_adapter
    from pipelines.index import run_index_local

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="ameli-sample-img-") as tmp:
        clip_cfg = Path(tmp) / "tiny-clip.json"
        clip_cfg.write_text(json.dumps(TINY_CLIP))
        torch.manual_seed(0)
        enc = OpenClipImageEncoder(str(clip_cfg), pretrained=None, device="cpu", batch_size=32)
        write_ameli_families(tmp, seed=args.seed, images=True, unnamed_share=UNNAMED_SHARE)
        ds = load_dataset("ameli", tmp)
        base = [*args.overrides, TEMPLATE, "method=ameli", "models.image_encoder.enabled=true",
                f"models.image_encoder.model={clip_cfg}"]
        cfg = load_config(args.config, base)
        idx = run_index_local(ds.kb, Path(tmp) / "index", cfg, parts.text_encoder, image_encoder=enc)
        t0 = time.perf_counter()
        trained = train_adapter(embed_pairs(collect_image_pairs(ds, "train"), enc), Path(tmp) / "adapter",
                                alpha=cfg.train.adapter.ratio, temperature=cfg.train.adapter.temperature,
                                steps=ADAPTER_STEPS, batch_size=32, lr=cfg.train.adapter.lr, seed=0,
                                frozen_params=frozen_parameter_count(enc))
        out["adapter"] = {"pairs": trained["train_pairs"], "steps": trained["steps"],
                          "loss_first": round(trained["losses"][0], 4), "loss_last": round(trained["losses"][-1], 4),
                          "trainable_params": trained["trainable_params"], "frozen_params": trained["frozen_params"],
                          "seconds": round(time.perf_counter() - t0, 1)}
        dev, test = ds.split("dev"), ds.split("test")
        out["test_unnamed"] = sum(m.context.startswith("Works well.") for m in test)
        text_only = Runner.load(load_config(args.config, [*args.overrides, TEMPLATE, "method=ameli"]), str(idx),
                                text_encoder=parts.text_encoder, cross_encoder=parts.cross_encoder)
        t1 = time.perf_counter()
        out["ameli (text only)"] = _row(evaluate(test, text_only.link(test), ds.kb), len(test),
                                        time.perf_counter() - t1)
        for label, adapter in (("ameli+images", trained["path"]), ("ameli+images-no-adapter", None)):
            over = base + ([f"ameli.image.adapter_path={adapter}"] if adapter else [])
            runner = Runner.load(load_config(args.config, over), str(idx), text_encoder=parts.text_encoder,
                                 image_encoder=enc, cross_encoder=parts.cross_encoder)
            head = runner.cfg.ameli.text.candidates
            rows = [(m.gold, r.candidates) for m, r in zip(dev, runner.link(dev))]
            grid = {}
            for lam in LAMBDAS:
                for p in PRIORS:
                    hits = 0
                    for gold, cands in rows:
                        cs = sorted(cands, key=lambda c: -c.scores.get("incoming", c.score))
                        fused = fuse(cs, head, lam=lam, prior_weight=p)
                        hits += fused[0].entity_id == gold
                    grid[f"lam={lam}/p={p}"] = round(100 * hits / len(rows), 2)
            # highest dev H@1; ties to the larger image weight (smaller lambda), then the smaller p
            best = max(grid, key=lambda k: (grid[k], -float(k.split("/")[0][4:]), -float(k.split("=")[-1])))
            lam, p = float(best.split("/")[0][4:]), float(best.split("=")[-1])
            tuned = Runner(load_config(args.config, [*over, f"ameli.fusion.lam={lam}",
                                                     f"ameli.fusion.prior_weight={p}"]), runner.parts, method="ameli")
            t1 = time.perf_counter()
            results = tuned.link(test)
            out[label] = {**_row(evaluate(test, results, ds.kb), len(test), time.perf_counter() - t1),
                          "lam": lam, "prior_weight": p, "dev_hits@1": grid[best], "dev_grid": grid,
                          "test_with_image": sum(m.image is not None for m in test)}
            logging.info("%s: %s", label, {k: v for k, v in out[label].items() if k != "dev_grid"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated sample")
    ap.add_argument("--config", default=str(REPO / "configs" / "ameli.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ameli_sample.json"))
    ap.add_argument("--no-images", action="store_true", help="skip the rows with photos (tiny CLIP + adapter)")
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
            rows[method] = _row(rep, len(mentions), secs)
            logging.info("%s: %s", method, rows[method])
        stats = {"entities": len(ds.kb), "test_mentions": len(mentions),
                 "test_nil": sum(m.gold is None for m in mentions)}
    images = None if args.no_images else image_rows(args, parts)
    out = {"dataset": "ameli-families (generated, mel/datasets/ameli_families.py)", "seed": args.seed, **stats,
           "index_entity_template": "{name}. {description}", "config": str(Path(args.config).relative_to(REPO))
           if Path(args.config).is_relative_to(REPO) else args.config, "overrides": args.overrides,
           "nil_threshold": None, "methods": rows, "images": images,
           "command": "python bench/bench_ameli_sample.py" + "".join(f" --set {o}" for o in args.overrides)}
    write_text_atomic(Path(args.out), json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
