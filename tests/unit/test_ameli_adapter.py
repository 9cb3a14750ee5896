"""AMELI's residual CLIP adapter module (shape, residual mixing, save/load with its record, refusal for another
encoder, dimension or damaged weights) and the contrastive loss and batch order of its training, without models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mel.errors import ArtifactMismatch


def test_adapter_shape_and_residual_mixing(tmp_path: Path) -> None:
    import torch

    from mel.ameli.clip_adapter import (
        ADAPTER_META,
        IdentityAdapter,
        adapter_module,
        load_clip_adapter,
        save_clip_adapter,
        trainable_parameters,
    )

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    a = adapter_module(16, 0.3)
    assert a.hidden == 4 and [tuple(p.shape) for p in a.mlp.parameters()] == [(4, 16), (4,), (16, 4), (16,)]
    assert trainable_parameters(a) == 16 * 4 + 4 + 4 * 16 + 16
    y = a(x)
    assert y.shape == (5, 16) and torch.allclose(y.norm(dim=-1), torch.ones(5), atol=1e-6)
    want = torch.nn.functional.normalize(0.3 * a.mlp(x) + 0.7 * x, dim=-1)
    assert torch.allclose(y, want, atol=1e-6)
    a0 = adapter_module(16, 0.0)
    assert torch.allclose(a0(x), x, atol=1e-6)  # alpha 0: the CLIP embedding unchanged
    a1 = adapter_module(16, 1.0)
    assert torch.allclose(a1(x), torch.nn.functional.normalize(a1.mlp(x), dim=-1), atol=1e-6)
    np.testing.assert_allclose(IdentityAdapter().transform(3 * x.numpy()), x.numpy(), atol=1e-6)
    # save / load: same outputs; another encoder or dim refused
    out = save_clip_adapter(a, tmp_path / "ad", {"image_encoder_id": "enc-A", "steps": 0})
    back = load_clip_adapter(out, expect_image_encoder_id="enc-A", expect_dim=16)
    np.testing.assert_allclose(back.transform(x.numpy()), y.detach().numpy(), atol=1e-6)
    with pytest.raises(ArtifactMismatch, match="trained on image encoder 'enc-A'.*'enc-B'"):
        load_clip_adapter(out, expect_image_encoder_id="enc-B")
    with pytest.raises(ArtifactMismatch, match="16-dimensional.*gives 32"):
        load_clip_adapter(out, expect_dim=32)
    (out / "adapter.pt").write_bytes(b"damaged")
    with pytest.raises(ArtifactMismatch, match="SHA-256"):
        load_clip_adapter(out)
    (out / ADAPTER_META).unlink()
    with pytest.raises(ArtifactMismatch, match="not a CLIP adapter folder"):
        load_clip_adapter(out)


def test_info_nce_masks_same_product_and_batches_are_per_step() -> None:
    import torch

    from mel.train.clip_adapter import batch_indices, info_nce

    eye = torch.eye(3)
    perfect = info_nce(eye, eye, torch.tensor([0, 1, 2]), 0.05)
    assert float(perfect) < 1e-6
    # rows 0 and 1 are the same product: its other image is not a negative
    two = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(info_nce(two, two, torch.tensor([0, 0, 1]), 0.05)) < 1e-6
    assert float(info_nce(two, two, torch.tensor([0, 1, 2]), 0.05)) > 0.4  # ln 2 on two of three rows
    steps = [batch_indices(10, s, 4, seed=3) for s in range(5)]
    assert steps == [batch_indices(10, s, 4, seed=3) for s in range(5)]  # a function of the step alone
    assert sorted(steps[0] + steps[1] + steps[2][:2]) == list(range(10))  # one pass = one permutation
