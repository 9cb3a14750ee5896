"""`mel train selector` with the real SmolLM2-135M: the adapter's manifest, exact resume from a checkpoint, and the
contract with serving: a freshly trained adapter loads in vLLM and changes its answers (the Serve app with the
adapter named in the request: tests/integration/test_serve_graph.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures.models import SELECTOR_TRAIN_SET

pytestmark = pytest.mark.integration


def test_adapter_records_how_it_was_made(selector_adapter: str, demo_index: Path, llm_dir: str) -> None:
    from mel.index.manifest import read_manifest
    from mel.llm.adapters import ADAPTER_META, check_lora_adapter
    from mel.models.fingerprint import architecture_fingerprint
    from mel.stages.select import PROMPT_VERSION

    meta = json.loads((Path(selector_adapter) / ADAPTER_META).read_text())
    assert meta["prompt_version"] == PROMPT_VERSION and meta["steps"] == 3 and len(meta["losses"]) == 3
    assert meta["kb_hash"] == read_manifest(demo_index).kb_hash
    assert meta["base_fingerprint"] == architecture_fingerprint(llm_dir)
    assert 0.6 < 100 * meta["trainable_share"] < 0.8  # r=8 on q/k/v/o: 0.68% of SmolLM2-135M
    stats = meta["example_stats"]
    assert stats["not_in_kb"] >= 1 and stats["trained"] == meta["examples"]  # NIL mentions counted, not trained
    assert meta["dev"]["mentions"] >= 1
    if meta["dev"]["examples"]:
        assert {"before", "after"} <= set(meta["evaluation"])
    check_lora_adapter(selector_adapter, max_rank=16, base_fingerprint=architecture_fingerprint(llm_dir))


def test_resume_continues_exactly_where_the_run_stopped(selector_adapter: str, demo_index: Path,
                                                        tmp_path: Path) -> None:
    from mel.entrypoints.cli import main

    out = tmp_path / "adapter"
    base = ["train", "selector", "--mentions", str(REPO / "data" / "demo" / "mentions.jsonl"),
            "--index", str(demo_index), "--out", str(out)]
    for s in SELECTOR_TRAIN_SET + ["train.selector.dev_limit=0"]:
        base += ["--set", s]
    assert main(base + ["--steps", "2"]) == 0  # an interrupted run: its last checkpoint is step 2
    assert main(base + ["--steps", "3", "--resume"]) == 0
    resumed = json.loads((out / "mel_adapter.json").read_text())
    full = json.loads((Path(selector_adapter) / "mel_adapter.json").read_text())
    assert resumed["resumed_from_step"] == 2
    assert resumed["losses"] == pytest.approx(full["losses"], abs=1e-4)


def test_a_freshly_trained_adapter_loads_in_vllm_and_changes_answers(selector_adapter: str, vllm_engine) -> None:  # noqa: ANN001
    from mel.config import load_config
    from mel.llm.base import LoRASpec
    from mel.mentions import read_mentions
    from mel.stages.select import selection_prompt
    from mel.types import Candidate

    cfg = load_config(None).selection
    m = read_mentions(REPO / "data" / "demo" / "mentions.jsonl")[0]
    head = [Candidate(f"Q{i}", n, 0.0) for i, n in enumerate(["Jaguar Cars", "Jaguar (animal)", "Fender Jaguar"])]
    prompt, letters = selection_prompt(m, head, lambda eid: "", cfg, vllm_engine.format_chat)
    (base,) = vllm_engine.choose([prompt], [letters])
    (tuned,) = vllm_engine.choose([prompt], [letters], lora=LoRASpec("fresh-selector", selector_adapter))
    assert tuned.label in letters and tuned.probs is not None
    assert tuned.probs != base.probs, "the trained adapter should change the distribution"


def test_training_can_start_from_another_adapter(lora_adapter: str, llm_dir: str, tmp_path: Path) -> None:
    """`train.selector.init_adapter`: the new adapter starts from the given weights (e.g. trained on another KB),
    records where they came from, and an adapter of another shape is refused before training."""
    from safetensors.torch import load_file

    from mel.errors import ArtifactMismatch
    from mel.train.lora import save_lora_adapter

    copy = save_lora_adapter(llm_dir, str(tmp_path / "copy"), rank=8, alpha=16, init_adapter=lora_adapter)
    ours, theirs = (load_file(str(Path(d) / "adapter_model.safetensors")) for d in (copy["path"], lora_adapter))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    assert any(v.abs().sum() > 0 for k, v in ours.items() if "lora_B" in k)  # not the zero init
    assert copy["init_adapter"]["path"] == str(Path(lora_adapter).resolve())
    assert len(copy["init_adapter"]["weights_sha256"]) == 16
    pairs = [("Which letter? A or B", "A")]
    tuned = save_lora_adapter(llm_dir, str(tmp_path / "tuned"), rank=8, alpha=16, init_adapter=lora_adapter,
                              train_pairs=pairs, steps=1, lr=1e-3)
    after = load_file(str(Path(tuned["path"]) / "adapter_model.safetensors"))
    assert any(not (after[k] == theirs[k]).all() for k in after)
    with pytest.raises(ArtifactMismatch, match="rank"):
        save_lora_adapter(llm_dir, str(tmp_path / "r4"), rank=4, alpha=16, init_adapter=lora_adapter)
    assert not (tmp_path / "r4").exists()
