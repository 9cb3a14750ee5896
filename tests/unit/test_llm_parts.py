"""LLM pieces that need no model: the fake engine, LoRA adapter checks, label probabilities, input checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from mel.errors import ArtifactMismatch, InputError
from mel.llm.adapters import ADAPTER_META, check_lora_adapter
from mel.llm.base import LLMEngine, LoRASpec
from mel.llm.vllm_engine import _check_labels, _label_probs
from mel.train.lora import save_lora_adapter
from tests.doubles.llm import FakeLLMEngine

PROMPT = """Mention: "Paris" in "We landed in Paris, the capital of France."
A) Paris Hilton, American media personality
B) Paris, capital and largest city of France
C) Paris, Texas
Answer:"""


def test_fake_engine_picks_the_overlapping_option() -> None:
    eng = FakeLLMEngine()
    assert isinstance(eng, LLMEngine)
    out = eng.choose([PROMPT, PROMPT], [["A", "B", "C"], ["A", "C"]], lora=LoRASpec("x", "/tmp/x"))
    assert out[0].label == "B"
    assert out[0].probs is not None and math.isclose(sum(out[0].probs.values()), 1.0)
    assert max(out[0].probs, key=out[0].probs.get) == "B"
    assert math.isclose(out[0].logprob, math.log(out[0].probs["B"]))
    assert out[1].label in ("A", "C")
    assert out == eng.choose([PROMPT, PROMPT], [["A", "B", "C"], ["A", "C"]])  # deterministic
    assert eng.calls[0] == ("choose", 2, "x")
    with pytest.raises(InputError):
        eng.choose([PROMPT], [])
    with pytest.raises(InputError):
        eng.choose([PROMPT], [["A", "A"]])
    eng.shutdown()
    with pytest.raises(RuntimeError):
        eng.generate(["x"])


def test_label_probs_softmax_over_labels() -> None:
    step = {49: SimpleNamespace(logprob=-0.5), 50: SimpleNamespace(logprob=-1.5), 7: SimpleNamespace(logprob=-0.1)}
    probs = _label_probs(step, {"A": 49, "B": 50, "C": 51})
    assert probs is not None
    assert math.isclose(sum(probs.values()), 1.0)
    assert probs["C"] == 0.0 and probs["A"] > probs["B"]
    assert math.isclose(probs["A"] / probs["B"], math.e)
    assert _label_probs({}, {"A": 49}) is None


def test_label_checks() -> None:
    _check_labels(0, ["A", "B"])
    for bad in ([], ["A", "A"], ["A", " B"], ["A", ""], "AB"):
        with pytest.raises(InputError):
            _check_labels(3, bad)  # type: ignore[arg-type]


def _adapter(tmp_path: Path, **cfg: object) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "modules_to_save": None, **cfg}))
    (d / "adapter_model.safetensors").write_bytes(b"")
    return d


def test_adapter_checks(tmp_path: Path) -> None:
    d = _adapter(tmp_path)
    assert check_lora_adapter(d, max_rank=16)["r"] == 8
    with pytest.raises(ArtifactMismatch, match="rank 8 exceeds the engine's max_lora_rank 1"):
        check_lora_adapter(d, max_rank=1)
    (d / ADAPTER_META).write_text(json.dumps({"base_fingerprint": "aaaa", "base_model": "/m/one"}))
    check_lora_adapter(d, max_rank=16, base_fingerprint="aaaa")
    with pytest.raises(ArtifactMismatch, match="trained on base model /m/one"):
        check_lora_adapter(d, max_rank=16, base_fingerprint="bbbb")


def test_adapter_with_modules_to_save_or_missing_files(tmp_path: Path) -> None:
    d = _adapter(tmp_path, modules_to_save=["lm_head"])
    with pytest.raises(ArtifactMismatch, match="modules_to_save"):
        check_lora_adapter(d, max_rank=16)
    with pytest.raises(InputError, match="not a directory"):
        check_lora_adapter(tmp_path / "none", max_rank=16)
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        check_lora_adapter(d, max_rank=16)


def test_save_lora_adapter_validates_before_loading(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="needs train_pairs"):
        save_lora_adapter(str(tmp_path / "base"), str(tmp_path / "out"), steps=2)
    with pytest.raises(InputError, match="train pair 0"):
        save_lora_adapter(str(tmp_path / "base"), str(tmp_path / "out"), steps=1, train_pairs=[("q", "")])
    with pytest.raises(InputError, match="not a Hugging Face model folder"):
        save_lora_adapter(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(InputError, match="already exists"):
        save_lora_adapter(str(tmp_path / "base"), str(tmp_path / "base"))
