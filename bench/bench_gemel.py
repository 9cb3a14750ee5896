"""GEMEL measured: the KB name trie (build time, size, collisions) for each dataset under SmolLM2's tokenizer, and
the `gemel` method (16 in-context demonstrations from the training split's stored demonstration index, generation
through transformers) at beam 1 and 4 on a fixed sample of test mentions: seconds per mention, H@1, and where it
fails: a wrong name, or the right name given to another entity bearing it (a collision resolved wrong).

Writes ``bench/results/gemel.json``.

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
    ap.add_argument("--sample", type=int, default=30, help="test mentions (the evaluator's fixed sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gemel.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.entrypoints import commands
    from mel.eval import fixed_sample
    from mel.gemel.trie import NameTrie
    from mel.runner import Runner

    out: dict = {"sample": args.sample, "seed": args.seed, "datasets": {}}
    parts = None
    for ds_name in args.datasets:
        ds = load_dataset(ds_name)
        index_dir = str(Path(args.workdir) / f"index-{ds_name}")
        base = ["method=gemel", f"gemel.demos.dataset={ds_name}"]
        cfg = load_config(None, base)
        commands.ensure_dataset_index(cfg, ds, index_dir, None)
        runner = Runner.load(cfg, index_dir, **({} if parts is None else {
            "text_encoder": parts.text_encoder, "gemel_lm": parts.gemel_lm}))
        parts = runner.parts
        lm = parts.gemel_lm
        out.update(llm=cfg.models.llm.model, decoding=f"transformers (HFPrefixLM), {cfg.gemel.dtype}, 2 CPU cores",
                   demos=cfg.gemel.demos.n, prompt_budget=cfg.gemel.prompt_tokens)
        t0 = time.perf_counter()
        trie = NameTrie.build(((e.id, [e.name, *e.aliases]) for e in ds.kb), lm.tokenizer,
                              kb_hash=ds.kb.content_hash())
        build_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            size = trie.save(Path(tmp) / "trie.json").stat().st_size
        nodes, stack = 0, [trie.root]
        while stack:
            n = stack.pop()
            nodes += len(n)
            stack.extend(n.values())
        mentions = fixed_sample(ds.split("test"), args.sample, args.seed)
        per_beam: dict[str, dict] = {}
        for beams in (1, 4):
            r = Runner(load_config(None, [*base, f"gemel.beams={beams}"]), parts, method="gemel")
            results = r.link(mentions)
            gen = [x.timings_ms["generate"] / 1000 for x in results]
            hit = wrong_name = wrong_id = nothing = collided = collided_right = 0
            for m, x in zip(mentions, results, strict=True):
                if not x.candidates:
                    nothing += 1
                    continue
                top = x.candidates[0]
                same_name = [c.entity_id for c in x.candidates if c.scores["beam"] == top.scores["beam"]]
                if top.scores.get("name_collision") == 1.0:
                    collided += 1
                    collided_right += top.entity_id == m.gold
                if top.entity_id == m.gold:
                    hit += 1
                elif m.gold in same_name:
                    wrong_id += 1
                else:
                    wrong_name += 1
            n = len(mentions)
            per_beam[str(beams)] = {
                "s_per_mention_median": round(statistics.median(gen), 3), "s_per_mention_max": round(max(gen), 3),
                "hits@1": round(100 * hit / n, 1), "wrong_name": wrong_name, "right_name_wrong_id": wrong_id,
                "no_name": nothing, "collided": collided, "collided_right": collided_right}
            logging.info("%s beam %d: %s", ds_name, beams, per_beam[str(beams)])
        demo_meta = next(iter(sorted((Path(index_dir) / "extras").glob("gemel-demos-*/manifest.json"))), None)
        out["datasets"][ds_name] = {
            "entities": len(ds.kb), "names": len(trie), "colliding_names": trie.meta["colliding_names"],
            "merged_spellings": trie.meta["merged_spellings"], "trie_nodes": nodes, "trie_build_s": round(build_s, 2),
            "trie_json_mb": round(size / 2**20, 2), "max_name_tokens": trie.max_depth,
            "demo_pool": len(runner.steps[0].pool),
            "demo_index_build_s": json.loads(demo_meta.read_text()).get("build_s") if demo_meta else None,
            "beams": per_beam,
        }
    out["command"] = "python bench/bench_gemel.py --sample " + str(args.sample)
    write_text_atomic(Path(args.out), json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
