"""GPU path (opt-in: ``pytest -m gpu`` on a machine with CUDA, torch CUDA build, vllm and faiss-gpu)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.fixture(scope="module")
def cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def test_text_encoder_and_faiss_on_gpu(cuda: None) -> None:
    import faiss
    import numpy as np

    from mel.config import TextEncoderConfig
    from mel.encoders import build_text_encoder

    enc = build_text_encoder(TextEncoderConfig(device="cuda"))
    v = enc.encode(["Jaguar, the British car maker", "jaguar, the big cat"])
    assert v.shape == (2, enc.dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert faiss.get_num_gpus() >= 1


def test_vllm_engine_on_gpu_chooses_a_label(cuda: None) -> None:
    from mel.config import LLMConfig
    from mel.llm.vllm_engine import VLLMEngine

    eng = VLLMEngine(LLMConfig(dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.3))
    try:
        out = eng.choose([eng.format_chat("Answer with a letter.", "Which is a fruit? A. car B. apple")],
                         [["A", "B"]])
        assert out[0].label in {"A", "B"}
    finally:
        eng.shutdown()
