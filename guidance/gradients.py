"""The binding loss of a guidance forward as a number, and its gradient with respect to the latent leaf."""

from __future__ import annotations

from typing import Any

import torch


def loss_and_gradient(result: Any, leaf: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(total loss, ∇_leaf total)`` for an objective's LossResult; a zero gradient when the loss has no graph."""
    total = result.total.float().sum()
    if not total.requires_grad:
        return float(total), torch.zeros_like(leaf)
    (grad,) = torch.autograd.grad(total, leaf)
    return float(total.detach()), grad
