"""CPU cost of each stage of indexing and linking, measured one at a time in one process (input to
docs/gpu-scaling.md: which stages a GPU takes over and which stay on CPU).

Writes ``bench/results/stage_costs.json``: per stage, items/s and ms per item on this machine, plus the token
lengths of the texts the encoder sees (RichpediaMEL and WikiMEL, MiniLM tokenizer, capped at max_seq_length):

    python bench/bench_stage_costs.py                 # RichpediaMEL KB and test mentions (the committed numbers)
    python bench/bench_stage_costs.py --limit 2000    # quick check

Stages: reading the KB file, building entity texts, tokenizing them (the part of encoding that stays on the
host with a GPU) and the encoder's forward pass, timed batch by batch in the same pass over a sample
(``--encode-sample``), encoding end to end, the faiss Flat index build and search (top-k, one query at a time and
in batches), and mention encoding one at a time and in batches (serving vs batch linking). The 1-minute load
average at start and end is recorded: on a shared machine the absolute rates drift, shares within a pass less.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Median seconds of ``repeat`` runs and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def rate(n: int, seconds: float) -> dict[str, float]:
    """Items/s and ms per item, with the 1-minute load average when the stage ended (contention on shared cores)."""
    return {"items": n, "seconds": round(seconds, 4), "per_s": round(n / seconds, 1),
            "ms_per_item": round(1000 * seconds / n, 4), "load_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="data root holding richpedia-mel/ and wikimel/ (default: $MEL_DATA_DIR or "
                    "../shared/data)")
    ap.add_argument("--limit", type=int, help="first N entities / mentions (quick checks)")
    ap.add_argument("--encode-sample", type=int, default=2000, help="entities timed stage by stage in the encoder")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "stage_costs.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from mel.compat import prepare

    prepare()
    import faiss
    import numpy as np

    from mel.atomic import write_text_atomic
    from mel.config import load_config
    from mel.datasets import load_dataset
    from mel.encoders import build_text_encoder
    from mel.kb.reader import read_kb, write_kb
    from mel.text import entity_text, mention_text

    load_before = round(os.getloadavg()[0], 2)
    cfg = load_config(None)
    te = cfg.models.text_encoder
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "torch_threads": None}, "text_encoder": te.model,
                           "batch_size": te.batch_size, "max_seq_length": te.max_seq_length, "stages": {},
                           "token_lengths": {}}
    encoder = build_text_encoder(te, cfg.models.cache_path())
    st = encoder._model  # noqa: SLF001 -- the SentenceTransformer, for tokenizer and forward timings
    import torch

    out["machine"]["torch_threads"] = torch.get_num_threads()

    for name in ("richpedia-mel", "wikimel"):
        ds = load_dataset(name, args.data_root)
        ents = list(ds.kb)[: args.limit or None]
        ments = ds.splits["test"][: args.limit or None]
        tok = st.tokenizer
        cap = te.max_seq_length
        el = [min(cap, len(x)) for x in tok([entity_text(e, cfg.index.entity_template) for e in ents])["input_ids"]]
        ml = [min(cap, len(x)) for x in tok([mention_text(m, cfg.retrieval.mention_template) for m in ments])
              ["input_ids"]]
        out["token_lengths"][name] = {"entity_mean": round(statistics.mean(el), 1), "mention_mean":
                                      round(statistics.mean(ml), 1)}

    ds = load_dataset("richpedia-mel", args.data_root)
    entities = list(ds.kb)[: args.limit or None]
    mentions = ds.splits["test"][: args.limit or None]
    n = len(entities)
    stages = out["stages"]
    out["kb"], out["entities"], out["mentions"] = "richpedia-mel", n, len(mentions)

    kb_file = REPO / "runs" / "bench-stage-costs" / "kb.jsonl"
    kb_file.parent.mkdir(parents=True, exist_ok=True)
    write_kb(entities, kb_file)
    logging.disable(logging.WARNING)  # read_kb warns once per missing image file (benchmark images are absent)
    s, _ = timed(lambda: read_kb(kb_file), repeat=3)
    logging.disable(logging.NOTSET)
    stages["read_kb_jsonl"] = rate(n, s)
    s, texts = timed(lambda: [entity_text(e, cfg.index.entity_template) for e in entities], repeat=3)
    stages["entity_texts"] = rate(n, s)

    bs = te.batch_size
    # Sorted by length like SentenceTransformer.encode does, so batches are padded as little as in real use.
    sample = sorted(texts[: args.encode_sample], key=len)
    m = len(sample)

    def tokenize_and_forward() -> tuple[float, float]:
        """One pass over the sample, batch by batch: (seconds tokenizing, seconds in the forward pass)."""
        t_tok = t_fwd = 0.0
        with torch.inference_mode():
            for i in range(0, m, bs):
                t0 = time.perf_counter()
                features = st.tokenize(sample[i:i + bs])
                t1 = time.perf_counter()
                st.forward(features)
                t_fwd += time.perf_counter() - t1
                t_tok += t1 - t0
        return t_tok, t_fwd

    tokenize_and_forward()  # warm-up
    passes = [tokenize_and_forward() for _ in range(2)]
    t_tok, t_fwd = min(passes, key=lambda p: p[0] + p[1])
    stages["tokenize_entities"] = rate(m, t_tok)
    stages["encoder_forward_entities"] = rate(m, t_fwd)
    s, _ = timed(lambda: encoder.encode(sample), repeat=2)
    stages["encode_entities_end_to_end"] = rate(m, s)
    # A Flat index costs the same for any vectors of this shape: random unit vectors stand in for the KB's.
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)


    def build() -> Any:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index

    s, index = timed(build, repeat=3)
    stages["faiss_flat_build"] = rate(n, s)
    mtexts = [mention_text(m, cfg.retrieval.mention_template) for m in mentions]
    qs = min(len(mtexts), 512)
    s, qv = timed(lambda: encoder.encode(mtexts[:qs]), repeat=1)
    stages["encode_mentions_batch"] = rate(qs, s)
    single = mtexts[:64]
    s, _ = timed(lambda: [encoder.encode([t]) for t in single], repeat=1)
    stages["encode_mentions_one_at_a_time"] = rate(len(single), s)
    qv = np.ascontiguousarray(qv, dtype=np.float32)
    k = cfg.retrieval.top_k
    s, _ = timed(lambda: index.search(qv, k), repeat=3)
    stages["faiss_flat_search_batch"] = rate(qs, s)
    s, _ = timed(lambda: [index.search(qv[i:i + 1], k) for i in range(64)], repeat=3)
    stages["faiss_flat_search_one_at_a_time"] = rate(64, s)
    out["top_k"] = k
    out["machine"]["load_average_1m"] = [load_before, round(os.getloadavg()[0], 2)]  # [start, end]: contention
    out["command"] = "python bench/bench_stage_costs.py" + (f" --limit {args.limit}" if args.limit else "")
    out["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
