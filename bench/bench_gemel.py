"""GEMEL's parts measured (no `gemel` method yet): the KB name trie (build time, size, collisions) for each dataset
under SmolLM2's tokenizer, and constrained generation through the transformers path at beam 1 and 4 on a fixed
sample of test mentions, with 16 in-context demonstrations retrieved from the training split (MiniLM).

Writes ``bench/results/gemel.json``. Orientation only: the name hit rate (the top name is borne by the gold) is
not the method's accuracy (no retrieval-score disambiguation of colliding names, no NIL).

    python bench/bench_gemel.py --sample 30
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["richpedia-mel", "wikimel"])
    ap.add_argument("--sample", type=int, default=30, help="test mentions timed (the evaluator's fixed sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demos", type=int, default=16, help="in-context demonstrations per prompt")
    ap.add_argument("--budget", type=int, default=1536, help="prompt tokens at most")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gemel.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.encoders import build_text_encoder
    from mel.eval import fixed_sample
    from mel.gemel.decode import ConstrainedBeamSearch
    from mel.gemel.demos import DemoPool
    from mel.gemel.lm import HFPrefixLM
    from mel.gemel.prompt import PromptFormat
    from mel.gemel.trie import NameTrie
    from mel.models.sources import resolve_model

    cfg = load_config(None)
    llm_dir = resolve_model(cfg.models.llm.model, kind="llm", cache_dir=cfg.models.cache_path())
    lm = HFPrefixLM(llm_dir)
    encoder = build_text_encoder(cfg.models.text_encoder, cfg.models.cache_path())
    fmt = PromptFormat(lm.tokenizer)
    out: dict = {"llm": cfg.models.llm.model, "decoding": "transformers (HFPrefixLM), float32, 2 CPU cores",
                 "demos": args.demos, "prompt_budget": args.budget, "sample": args.sample, "seed": args.seed,
                 "datasets": {}}
    for ds_name in args.datasets:
        ds = load_dataset(ds_name)
        t0 = time.perf_counter()
        trie = NameTrie.build(((e.id, [e.name, *e.aliases]) for e in ds.kb), lm.tokenizer,
                              kb_hash=ds.kb.content_hash())
        build_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            size = trie.save(Path(tmp) / "trie.json").stat().st_size
        nodes = 0
        stack = [trie.root]
        while stack:
            n = stack.pop()
            nodes += len(n)
            stack.extend(n.values())
        t0 = time.perf_counter()
        kb = ds.kb
        pool = DemoPool.build(ds.split("train"), lambda g, kb=kb: kb.get(g).name if g in kb else None, encoder)
        pool_s = time.perf_counter() - t0
        mentions = fixed_sample(ds.split("test"), args.sample, args.seed)
        qvecs = encoder.encode([f"{m.surface}. {m.context}" for m in mentions])
        per_beam: dict[str, dict] = {}
        for beams in (1, 4):
            search = ConstrainedBeamSearch(lm, trie, num_beams=beams)
            times, hits, collided, lens = [], 0, 0, []
            for m, q in zip(mentions, qvecs, strict=True):
                ids, kept = fmt.build(m, pool.nearest(m, q, args.demos), args.budget)
                lens.append(len(ids))
                t1 = time.perf_counter()
                found = search.search(ids)
                times.append(time.perf_counter() - t1)
                bearers = trie.ids_for(found[0].name) if found else []
                hits += m.gold in bearers
                collided += len(bearers) > 1
            per_beam[str(beams)] = {"s_per_mention_median": round(statistics.median(times), 3),
                                    "s_per_mention_max": round(max(times), 3),
                                    "name_hit_rate": round(100 * hits / len(mentions), 1),
                                    "top_name_collides": collided, "prompt_tokens_median": statistics.median(lens)}
            logging.info("%s beam %d: %s", ds_name, beams, per_beam[str(beams)])
        out["datasets"][ds_name] = {
            "entities": len(ds.kb), "names": len(trie), "colliding_names": trie.meta["colliding_names"],
            "merged_spellings": trie.meta["merged_spellings"], "trie_nodes": nodes, "trie_build_s": round(build_s, 2),
            "trie_json_mb": round(size / 2**20, 2), "max_name_tokens": trie.max_depth,
            "demo_pool": len(pool), "demo_pool_embed_s": round(pool_s, 1), "beams": per_beam,
        }
    out["command"] = "python bench/bench_gemel.py --sample " + str(args.sample)
    write_text_atomic(Path(args.out), json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
