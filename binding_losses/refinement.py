"""Iterative latent refinement at one sampling step (A&E, D&B, T-SAM): one pure loop, no ComfyUI.

The objective's :meth:`~binding_losses.base.Objective.refinement` says whether a step refines, its cap, its stop
rule and whether the rule is judged one update late (``stop_rule = faithful``, as every reference does). This module
runs that plan on any differentiable ``loss_and_grad``; the sampler passes one that runs a guidance forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .base import LossResult, Objective

LossAndGrad = Callable[[torch.Tensor], tuple[LossResult, torch.Tensor]]
"""``loss_and_grad(z) -> (result, ∇_z result.total.sum())`` at latent ``z``."""

ProgressCallback = Callable[[int, int], None]
"""``on_iteration(updates_done, max_iterations)``, called after each refinement update."""


@dataclass
class Refined:
    """What :func:`refine` returns. It unpacks as ``z, iterations, result``.

    - ``z``: the latent after refinement; ``iterations``: the refinement updates it took.
    - ``result``, ``grad``, ``loss``: the loss result at ``z``, ∇_z L there and ``result.total`` summed, as a
      float. The step's regular update uses them, so no further forward is needed.
    - ``initial_loss``: the summed loss at the latent :func:`refine` was given.
    - ``non_finite``: a non-finite loss, gradient or candidate latent was met. Refinement then stops and keeps
      the last finite latent. If it was the starting evaluation, nothing moved and ``usable`` is False.
    - ``usable``: ``result`` and ``grad`` are finite, so the regular update may use them.
    """

    z: torch.Tensor
    iterations: int
    result: LossResult
    grad: torch.Tensor
    loss: float
    initial_loss: float
    non_finite: bool = False
    usable: bool = True

    def __iter__(self) -> Iterator[Any]:
        return iter((self.z, self.iterations, self.result))


def summed_loss(result: LossResult) -> float:
    """``result.total`` summed over the batch, in fp32, as a float (what the update and the zero test read)."""
    return float(result.total.detach().float().sum())


def _finite(loss: float, grad: torch.Tensor) -> bool:
    return math.isfinite(loss) and bool(torch.isfinite(grad).all())


def refine(
    loss_and_grad: LossAndGrad,
    z: torch.Tensor,
    objective: Objective,
    step: int,
    num_steps: int,
    step_size: float | torch.Tensor,
    *,
    on_iteration: ProgressCallback | None = None,
) -> Refined:
    """Evaluate the loss at ``z`` and run the objective's refinement at loop index ``step``, if it has one.

    Each update is ``z ← z − step_size · ∇_z L``. ``step_size`` is a float or a tensor that broadcasts to ``z``
    (the sampler's α/c², times the inpainting mask). Every latent is evaluated once, so refine calls
    ``loss_and_grad`` ``1 + iterations`` times when every update moves the latent. The reference also reruns the
    starting latent and makes a last pass after the loop; the returned ``result`` and ``grad`` replace that pass.
    Judging one update late (``Refinement.lagged``) costs no extra pass: the judged result is one already computed.
    A zero loss makes no update (the reference's ``if loss != 0``): the iteration counts, and the latent and its
    result stay.
    """
    result, grad = loss_and_grad(z)
    loss = summed_loss(result)
    if not _finite(loss, grad):
        return Refined(z, 0, result, grad, loss, loss, non_finite=True, usable=False)
    plan = objective.refinement(step, num_steps)
    refined = Refined(z, 0, result, grad, loss, loss)
    if plan is None:
        return refined
    watched = result
    while plan.continues(watched, refined.iterations):
        before = refined.result
        if refined.loss != 0.0:
            candidate = refined.z - step_size * refined.grad
            if not bool(torch.isfinite(candidate).all()):
                refined.non_finite = True
                break
            new_result, new_grad = loss_and_grad(candidate)
            new_loss = summed_loss(new_result)
            if not _finite(new_loss, new_grad):
                refined.non_finite = True
                break
            refined.z, refined.result, refined.grad, refined.loss = candidate, new_result, new_grad, new_loss
        refined.iterations += 1
        watched = before if plan.lagged else refined.result
        if on_iteration is not None:
            on_iteration(refined.iterations, plan.max_iterations)
    return refined


__all__ = ["LossAndGrad", "ProgressCallback", "Refined", "refine", "summed_loss"]
