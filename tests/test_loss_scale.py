"""Loss scaling keeps the latent gradient of an fp16 network from underflowing, and backs off when it overflows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from binding_guidance.guidance.gradients import GradientOverflowError, LossScale, loss_and_gradient


def _fp16_chain(leaf: torch.Tensor, *factors: float) -> SimpleNamespace:
    """A loss whose backward runs in fp16: leaf → fp16 → multiplied by each factor → fp32 sum."""
    hidden = leaf.half()
    for factor in factors:
        hidden = hidden * factor
    return SimpleNamespace(total=hidden.float().sum())


def test_unscaled_fp16_gradient_underflows_and_the_scaled_one_is_exact() -> None:
    leaf = torch.ones(64, requires_grad=True)
    factors = (1e-3, 1e-3, 1e-2)  # dL/dleaf = 1e-8 per entry: below fp16's smallest subnormal (6e-8)
    _, plain = loss_and_gradient(_fp16_chain(leaf, *factors), leaf)
    assert torch.count_nonzero(plain) == 0
    scale = LossScale.for_dtype(torch.float16)
    _, scaled = loss_and_gradient(_fp16_chain(leaf, *factors), leaf, scale)
    assert scaled.dtype == torch.float32
    assert scaled == pytest.approx(torch.full((64,), 1e-8), rel=2e-2)
    assert scale.value == 4096.0


def test_overflowing_scale_backs_off_and_stays_lowered() -> None:
    leaf = torch.ones(8, requires_grad=True)
    scale = LossScale.for_dtype(torch.float16)
    with pytest.raises(GradientOverflowError) as overflow:  # 4096 · 30 overflows fp16 (max 65504)
        loss_and_gradient(_fp16_chain(leaf, 30.0), leaf, scale)
    assert overflow.value.loss == pytest.approx(240.0)
    assert scale.value == 256.0
    # The caller recomputes the loss (the graph was freed) and retries at the lowered scale.
    _, grad = loss_and_gradient(_fp16_chain(leaf, 30.0), leaf, scale)
    assert torch.equal(grad, torch.full((8,), 30.0))
    assert scale.value == 256.0


def test_no_scaling_outside_fp16() -> None:
    assert LossScale.for_dtype(torch.bfloat16).value == 1.0
    assert LossScale.for_dtype(torch.float32).value == 1.0
