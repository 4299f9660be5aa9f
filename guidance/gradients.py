"""The binding loss of a guidance forward as a number, and its gradient with respect to the latent leaf."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

_FP16_INITIAL_SCALE = 4096.0
_BACKOFF = 16.0


@dataclass
class LossScale:
    """Factor on the loss during the backward through a half-precision UNet, divided out of the gradient in fp32.

    In an fp16 UNet the gradients at the latent are often below fp16's smallest normal number (6e-5), where they
    lose precision or flush to zero; scaling the loss (as mixed-precision training does) keeps them representable.
    If a scaled gradient overflows, the scale drops for the rest of the run. bf16 and fp32 share fp32's exponent
    range and need no scaling.
    """

    value: float = 1.0

    @classmethod
    def for_dtype(cls, dtype: torch.dtype | None) -> LossScale:
        """The starting scale for a UNet computing in ``dtype``."""
        return cls(_FP16_INITIAL_SCALE if dtype == torch.float16 else 1.0)


class GradientOverflowError(RuntimeError):
    """The scaled gradient overflowed fp16. The scale has been lowered; recompute the loss to try again."""

    def __init__(self, loss: float, scale: float) -> None:
        super().__init__(f"fp16 gradient overflow; loss scale lowered to {scale:g}")
        self.loss = loss


def loss_and_gradient(result: Any, leaf: torch.Tensor, scale: LossScale | None = None) -> tuple[float, torch.Tensor]:
    """``(total loss, ∇_leaf total)`` for an objective's LossResult; a zero gradient when the loss has no graph.

    With a ``scale`` above 1 the backward runs on the scaled loss. If that gradient is not finite, the scale is
    lowered and :class:`GradientOverflowError` raised: the graph is freed by the backward (keeping it for a retry would
    hold every saved activation until the end of the backward, about doubling its peak memory).
    """
    total = result.total.float().sum()
    if not total.requires_grad:
        return float(total), torch.zeros_like(leaf)
    loss = float(total.detach())
    if scale is None or scale.value <= 1.0 or not math.isfinite(loss):
        (grad,) = torch.autograd.grad(total, leaf)
        return loss, grad
    (grad,) = torch.autograd.grad(total * scale.value, leaf)
    if bool(torch.isfinite(grad).all()):
        return loss, grad / scale.value
    scale.value = max(1.0, scale.value / _BACKOFF)
    raise GradientOverflowError(loss, scale.value)
