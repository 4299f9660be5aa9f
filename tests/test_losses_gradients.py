"""Every loss has a finite gradient, and a small step against it lowers the loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from binding_guidance.binding_losses import (
    TokenBinding,
    attend_excite_loss,
    divide_bind_loss,
    symmetric_kl,
    syngen_entropy_loss,
    syngen_loss,
    text_attention_matrix,
    tsam_loss,
)

K, H, W = 12, 8, 8
BINDINGS = (TokenBinding((3,), ((2,),)), TokenBinding((7,), ((5,), (6,))), TokenBinding((9, 10)))
PROMPT = tuple(range(1, 11))


def _text() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    raw = torch.rand(12, 12, generator=gen, dtype=torch.float64).tril() + torch.eye(12, dtype=torch.float64)
    return text_attention_matrix(raw / raw.sum(dim=-1, keepdim=True), tokens=range(1, 11))


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "syngen": lambda m: syngen_loss(m, BINDINGS, PROMPT),
    "syngen_entropy_written": lambda m: syngen_entropy_loss(m, BINDINGS, PROMPT, 0.1, 0.1, "as_written"),
    "syngen_entropy_prose": lambda m: syngen_entropy_loss(m, BINDINGS, PROMPT, 0.1, 0.1, "prose_intent"),
    "attend_excite": lambda m: attend_excite_loss(m, [(3,), (7,)]),
    "divide_bind_tv_bind": lambda m: divide_bind_loss(m, [(3,), (7,)], m, [(2,), (5,)], bind_weight=5.0),
    "divide_bind_fixed": lambda m: divide_bind_loss(m, [(3,), (7,)], m, [(2,), (5,)], tv_variant="fixed"),
    "divide_bind_paper_tv": lambda m: divide_bind_loss(m, [(3,), (7,)], m, [(2,), (5,)], tv_variant="paper"),
    "tsam_code": lambda m: tsam_loss(m, _text(), PROMPT),
    "tsam_paper": lambda m: tsam_loss(m, _text(), PROMPT, loss_type="paper"),
    "symmetric_kl": lambda m: symmetric_kl(m[:, 2], m[:, 3]),
}


def _maps(logits: torch.Tensor) -> torch.Tensor:
    """Attention-like maps: softmax over the token axis of free logits."""
    return torch.softmax(logits, dim=1)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_step_lowers_loss(name: str) -> None:
    loss_fn = LOSSES[name]
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, K, H, W, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    loss = loss_fn(_maps(logits))
    assert loss.shape == (2,)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    step = 1e-3 * grad / grad.norm()
    with torch.no_grad():
        after = loss_fn(_maps(logits - step))
    assert after.sum() < loss.sum(), (loss, after)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_gradient_is_finite(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, K, H, W, generator=gen).requires_grad_()
    loss = LOSSES[name](_maps(logits).float())
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
