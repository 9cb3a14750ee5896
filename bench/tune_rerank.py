"""Tune cross-encoder re-ranking on dev splits: H@1 of retrieval alone vs retrieval + re-ranking.

For each dataset the first ``--limit`` dev mentions are retrieved once (top ``max(--ks)``) and every
(query, passage) pair of the head is scored once per query/passage format by the cross-encoder; H@1 is then computed
on the cached logits for every head size K, fusion weight w and normalisation
(``final = (1-w)*norm(retrieval) + w*norm(cross-encoder)``, the same :func:`mel.stages.rerank.fuse_rerank` the
stage uses). Writes ``bench/results/rerank_tuning.json``: the sweep, the best setting per dataset, the setting best
on average over the datasets (the recommended ``retrieval.rerank`` defaults), and pairs/s of the cross-encoder.

    python bench/tune_rerank.py --datasets richpedia-mel wikimel --limit 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mel.atomic import write_text_atomic  # noqa: E402  (after the sys.path insert)
from mel.stages.rerank import fuse_rerank  # noqa: E402

QUERY_TEMPLATES = {
    "surface+context": "{surface}. {context}",
    "surface": "{surface}",
    "question": "Who is {surface}? {context}",
}
PASSAGE_TEMPLATES: dict[str, str | None] = {
    "index": None,  # the text the index embedded (index.entity_template: "{name}. {attributes}")
    "attributes+name": "{attributes} {name}",
}
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
TOLERANCE = 0.25
"""H@1 points (mean over datasets) within which a cheaper setting (smaller head) is preferred."""
NORMS: list[tuple[str, float]] = [("minmax", 0.05), ("sigmoid", 0.05), ("softmax", 0.02), ("softmax", 0.05),
                                  ("softmax", 0.1), ("softmax", 0.2)]

Row = tuple[str | None, list[tuple[str, float]], list[float]]
"""(gold id, [(entity id, retrieval score)] best first, cross-encoder logits of the first max(K) candidates)."""


def h_at_1(rows: list[Row], k: int, weight: float, how: str, temperature: float) -> float:
    """H@1 in percent after re-ranking the top ``k`` with the given fusion."""
    hits = 0
    for gold, cands, logits in rows:
        if not cands:
            continue
        final = fuse_rerank([s for _, s in cands], logits[:k], weight, how, temperature)
        best = max(range(len(cands)), key=lambda j: (final[j], -j))  # ties: the better retrieved one
        hits += cands[best][0] == gold
    return 100.0 * hits / max(1, len(rows))


def recall_at(rows: list[Row], k: int) -> float:
    return 100.0 * sum(gold in {e for e, _ in cands[:k]} for gold, cands, _ in rows) / max(1, len(rows))


def norm_name(how: str, temperature: float) -> str:
    return f"softmax@{temperature}" if how == "softmax" else how


def sweep(rows: list[Row], ks: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ks:
        for how, t in NORMS:
            out[f"k={k}/{norm_name(how, t)}"] = {str(w): round(h_at_1(rows, k, w, how, t), 2) for w in WEIGHTS}
    return out


def score_pairs(ce: Any, pairs: list[tuple[str, str]], cache: Path | None) -> tuple[list[float], dict[str, Any]]:
    """Cross-encoder logits for ``pairs`` and how long they took (seconds, load average), cached on disk by content
    (``<key>.npy`` + ``<key>.json``) so re-runs and other sweeps reuse them."""
    import numpy as np

    meta_file = cache.with_suffix(".json") if cache is not None else None
    if cache is not None and meta_file is not None and cache.is_file() and meta_file.is_file():
        logits = np.load(cache)
        if len(logits) == len(pairs):
            return logits.tolist(), json.loads(meta_file.read_text())
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    logits = ce.score(pairs)
    secs = time.perf_counter() - t0
    meta = {"pairs": len(pairs), "score_seconds": round(secs, 1),
            "pairs_per_s": round(len(pairs) / secs, 1) if secs > 0 else None,
            "load_average_1m": round((load_before + os.getloadavg()[0]) / 2, 1), "cpus": os.cpu_count()}
    if cache is not None and meta_file is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, logits)
        os.replace(tmp, cache)
        meta_file.write_text(json.dumps(meta))
    return logits.tolist(), meta


def mean(by_dataset: dict[str, float]) -> float:
    return sum(by_dataset.values()) / len(by_dataset)


def weight_of(key: str) -> float:
    return float(key.rsplit("|", 1)[1])


def smoothed(complete: dict[str, dict[str, float]], key: str) -> float:
    """Mean H@1 of ``key`` averaged with the same setting at the neighbouring weights."""
    stem, w = key.rsplit("|", 1)
    i = WEIGHTS.index(float(w))
    near = [f"{stem}|{WEIGHTS[j]}" for j in (i - 1, i, i + 1) if 0 <= j < len(WEIGHTS)]
    return sum(mean(complete[k]) for k in near if k in complete) / sum(k in complete for k in near)


def summarize(complete: dict[str, dict[str, float]], key: str, results: dict[str, Any],
              datasets: list[str]) -> dict[str, Any]:
    fmt_q, fmt_p, sk, w = key.split("|")
    k, norm = sk.split("/")
    how, _, temp = norm.partition("@")
    return {"key": key, "query": fmt_q, "passage": fmt_p, "candidates": int(k[2:]), "normalize": how,
            "temperature": float(temp) if temp else None, "weight": float(w),
            "mean_h@1": round(mean(complete[key]), 2), "h@1": complete[key],
            "retrieval_h@1": {n: results[n]["retrieval_h@1"] for n in datasets}, "datasets": datasets}


def measure_throughput(rcfg: Any, pairs: list[tuple[str, str]], cache_dir: str) -> list[dict[str, Any]]:
    """pairs/s of the cross-encoder on ``pairs`` for a few batch sizes and thread counts (one warm-up batch each)."""
    from mel.rerank import build_cross_encoder

    out = []
    for threads in (1, 2):
        for batch_size in (8, 32, 64):
            ce = build_cross_encoder(rcfg.model_copy(update={"threads": threads, "batch_size": batch_size}), cache_dir)
            ce.score(pairs[:batch_size])
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            ce.score(pairs)
            secs = time.perf_counter() - t0
            out.append({"threads": threads, "batch_size": batch_size, "pairs": len(pairs),
                        "pairs_per_s": round(len(pairs) / secs, 1),
                        "load_average_1m": round((load_before + os.getloadavg()[0]) / 2, 1)})
            logging.info("throughput %s", out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=500, help="first N dev mentions")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="head sizes re-ranked")
    ap.add_argument("--queries", nargs="+", default=list(QUERY_TEMPLATES), choices=list(QUERY_TEMPLATES))
    ap.add_argument("--passages", nargs="+", default=["index"], choices=list(PASSAGE_TEMPLATES))
    ap.add_argument("--throughput", type=int, default=0, metavar="N",
                    help="also time N pairs (of the last dataset) at several batch sizes and thread counts")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--data-dir", help="benchmark data root (default: $MEL_DATA_DIR or ../shared/data)")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rerank_tuning.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.methods import build_linker
    from mel.rerank import build_cross_encoder
    from mel.text import entity_text, mention_text

    k_max = max(args.ks)
    cfg = load_config(args.config, args.overrides + ["method=retrieval", "retrieval.rerank.enabled=false",
                                                     f"retrieval.top_k={max(k_max, 20)}"])
    rcfg = cfg.retrieval.rerank
    ce = build_cross_encoder(rcfg, cfg.models.cache_path())
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["settings"] = {"cross_encoder": ce.id, "max_length": getattr(ce, "max_length", rcfg.max_length),
                           "batch_size": rcfg.batch_size, "threads": rcfg.threads, "device": rcfg.device,
                           "text_encoder": cfg.models.text_encoder.model, "top_k": cfg.retrieval.top_k,
                           "mention_template": cfg.retrieval.mention_template, "split": args.split,
                           "limit": args.limit, "ks": args.ks, "weights": WEIGHTS,
                           "query_templates": {q: QUERY_TEMPLATES[q] for q in args.queries},
                           "passage_templates": {p: PASSAGE_TEMPLATES[p] for p in args.passages},
                           "command": "python bench/tune_rerank.py " + " ".join(argv or sys.argv[1:])}
    text_encoder = None
    last_pairs: list[tuple[str, str]] = []
    per_setting: dict[str, dict[str, float]] = {}  # "<format>|<sweep key>|<w>" -> {dataset: h@1}
    for name in args.datasets:
        ds = load_dataset(name, args.data_dir)
        index_dir = str(Path(args.workdir) / f"index-{name}")
        commands.ensure_dataset_index(cfg, ds, index_dir, args.data_dir)
        linker = build_linker(cfg, index_dir, text_encoder=text_encoder)
        text_encoder = linker.parts.text_encoder
        index = linker.parts.index
        retriever = linker.steps[0].retriever  # the method's first step: retrieve
        mentions = ds.splits[args.split][: args.limit]
        t0 = time.perf_counter()
        cand_lists = []
        for i in range(0, len(mentions), 64):
            cand_lists.extend(retriever.retrieve(mentions[i:i + 64]))
        retrieve_s = time.perf_counter() - t0
        entry: dict[str, Any] = {"split": args.split, "mentions": len(mentions),
                                 "retrieval_h@1": round(recall_at([(m.gold, [(c.entity_id, c.score) for c in cl], [])
                                                                   for m, cl in zip(mentions, cand_lists)], 1), 2),
                                 "recall@k": {}, "formats": {}, "retrieve_seconds": round(retrieve_s, 1)}
        for q in args.queries:
            for p in args.passages:
                fmt = f"{q}|{p}"
                tmpl = PASSAGE_TEMPLATES[p]
                pairs = []
                for m, cl in zip(mentions, cand_lists):
                    query = mention_text(m, QUERY_TEMPLATES[q])
                    for c in cl[:k_max]:
                        passage = index.text(c.entity_id) if tmpl is None else entity_text(index.entity(c.entity_id),
                                                                                           tmpl)
                        pairs.append((query, passage))
                # batch size is part of the key: INT8 dynamic quantisation scales activations per batch
                blob = json.dumps([ce.id, getattr(ce, "max_length", None), rcfg.batch_size, pairs]).encode()
                key = hashlib.sha256(blob).hexdigest()
                cache = Path(args.workdir) / "rerank-cache" / f"{name}-{key[:16]}.npy"
                logits, timing = score_pairs(ce, pairs, cache)
                last_pairs = pairs
                rows: list[Row] = []
                pos = 0
                for m, cl in zip(mentions, cand_lists):
                    h = min(len(cl), k_max)
                    rows.append((m.gold, [(c.entity_id, c.scores.get("retrieval", c.score)) for c in cl],
                                 logits[pos:pos + h]))
                    pos += h
                entry["recall@k"] = {str(k): round(recall_at(rows, k), 2) for k in args.ks}
                sw = sweep(rows, args.ks)
                best_key, best_w = max(((sk, float(w)) for sk, ws in sw.items() for w in ws),
                                       key=lambda t: (sw[t[0]][str(t[1])], -t[1]))
                entry["formats"][fmt] = {
                    "query_template": QUERY_TEMPLATES[q], "passage_template": tmpl or "<index text>",
                    **timing,
                    "cross_encoder_only_h@1": {str(k): sw[f"k={k}/minmax"]["1.0"] for k in args.ks},
                    "best": {"setting": best_key, "weight": best_w, "h@1": sw[best_key][str(best_w)]},
                    "h@1": sw}
                for sk, ws in sw.items():
                    for w, v in ws.items():
                        per_setting.setdefault(f"{fmt}|{sk}|{w}", {})[name] = v
                logging.info("%s %s: retrieval H@1 %.2f, best %s w=%s H@1 %.2f (%d pairs, %s pairs/s)", name, fmt,
                             entry["retrieval_h@1"], best_key, best_w, sw[best_key][str(best_w)], len(pairs),
                             timing["pairs_per_s"])
        results[name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "formats"}}, indent=1), flush=True)
    if args.throughput and last_pairs:
        results["throughput"] = {"model": ce.id, "max_length": getattr(ce, "max_length", rcfg.max_length),
                                 "cpus": os.cpu_count(), "runs": measure_throughput(
                                     rcfg, last_pairs[: args.throughput], cfg.models.cache_path())}
    complete = {k: v for k, v in per_setting.items() if len(v) == len(args.datasets)}
    if complete:
        results["best"] = summarize(complete, max(complete, key=lambda k: (mean(complete[k]), -weight_of(k))),
                                    results, args.datasets)
        # recommended: mean H@1 averaged with the neighbouring weights (a plateau, not a spike of a few mentions);
        # within TOLERANCE of the best such score the smaller head wins (fewer pairs to score), then the higher score
        smooth = {k: smoothed(complete, k) for k in complete}

        def recommend(keys: list[str]) -> dict[str, Any]:
            top = max(smooth[k] for k in keys)
            near = [k for k in keys if smooth[k] >= top - TOLERANCE]
            pick = min(near, key=lambda k: (int(k.split("|")[2].split("/")[0][2:]), -smooth[k], weight_of(k)))
            return {**summarize(complete, pick, results, args.datasets), "tolerance": TOLERANCE,
                    "smoothed_mean_h@1": round(smooth[pick], 2)}

        results["recommended"] = recommend(list(complete))
        formats = sorted({k.rsplit("|", 2)[0] for k in complete})
        results["recommended_by_format"] = {f: recommend([k for k in complete if k.startswith(f + "|")])
                                            for f in formats}
        print(json.dumps({k: results[k] for k in ("best", "recommended", "recommended_by_format")}, indent=1),
                         flush=True)
    write_text_atomic(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
