"""Faithful mode (the references): a separate conditional guidance forward with grad before each guided step.

At the first model call of a guided step, :class:`FaithfulRun` clones ``x`` outside inference mode, runs the
conditional-only UNet forward with the recorder's patches, computes the objective's loss (refining when the
schedule asks), and writes ``x' = x − (α/c²)·∇ₓL`` back into the sampler's tensor. The step's normal model call then
runs on the moved latent. An update that would make any element of the latent non-finite is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.samplers
import comfy.utils
import torch

from ..attention_patch import RecordingComplete
from ..binding_losses.refinement import ProgressCallback, refine
from ..kernels.cpu_convolution import guidance_convolutions
from ..kernels.differentiable_attention import with_differentiable_attention
from .gradients import GradientOverflowError, loss_and_gradient
from .model_loading import single_device
from .report import StepRecord
from .run import (
    BELOW_TARGET,
    NON_FINITE_LATENT,
    NON_FINITE_LOSS,
    NON_FINITE_REFINEMENT,
    GuidanceRun,
    finite_as,
    update_scale,
    update_skip_reason,
)


def _refinement_progress() -> ProgressCallback:
    """Refinement can take many UNet passes at one step: show them on the node's progress bar."""
    bar: comfy.utils.ProgressBar | None = None

    def advance(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return advance


@dataclass
class _Point:
    """A latent with its loss and gradient."""

    latent: torch.Tensor
    result: Any
    grad: torch.Tensor
    loss: float


class FaithfulRun(GuidanceRun):
    """Faithful guidance: all the work happens before the step's model call, on a guidance forward of its own."""

    def before_call(
        self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict
    ) -> dict:
        """Guide ``x`` in place; the step's model call keeps its ``model_options``."""
        self.guide(x, sigma, step, denoise_mask, model_options)
        return model_options

    def guidance_loss(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict, step: int) -> Any:
        """The objective's LossResult from a conditional-only forward on ``x`` (with grad if ``x`` requires it)."""
        self.recorder.reset()
        options = single_device(model_options)
        if self.config.guidance_attention == "sdpa":
            # Before the recorder's patches: a joint-attention recorder wraps this override.
            options = with_differentiable_attention(options)
        options = self.recorder.model_options_with_patches(options)
        try:
            with guidance_convolutions(self.config.cpu_convolution, x.device, self.kernel_timings):
                comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.positive], x, sigma, options)
        except RecordingComplete:
            pass
        return self.objective_loss(self.recorder.levels(), step)

    def loss_and_grad(
        self, latent: torch.Tensor, sigma: torch.Tensor, model_options: dict, step: int
    ) -> tuple[Any, torch.Tensor, float]:
        """(LossResult, ∇ₓL, loss) at ``latent``; an fp16 overflow repeats the pass at the lowered loss scale."""
        while True:
            leaf = latent.detach().requires_grad_(True)
            result = self.guidance_loss(leaf, sigma, model_options, step)
            try:
                loss, grad = loss_and_gradient(result, leaf, self.loss_scale)
            except GradientOverflowError:
                continue  # the scale was lowered (it ends at 1, which cannot overflow): one more guidance pass
            return result, grad, loss

    def guide(self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict) -> None:
        """Apply this step's guidance to the sampler's latent ``x`` in place."""
        if not self.wants_step(step) or self.stopped_early:
            return
        self.check_planned_sigma(sigma, step)
        step_size = float(self.objective.step_size(step, self.num_steps))
        with torch.inference_mode(False), torch.enable_grad():
            sigma_work = sigma.detach().clone()
            start = x.detach().clone().float()
            scale = update_scale(self.model_sampling, step_size, sigma_work, start, denoise_mask)

            def evaluate(candidate: torch.Tensor) -> _Point:
                return _Point(candidate, *self.loss_and_grad(candidate, sigma_work, model_options, step))

            # refine() refuses any iteration whose latent or loss would be non-finite and keeps the last finite one.
            refined = refine(
                lambda z: self.loss_and_grad(z, sigma_work, model_options, step)[:2],
                start,
                self.objective,
                step,
                self.num_steps,
                scale,
                on_iteration=_refinement_progress(),
            )
            refinement_stopped = NON_FINITE_REFINEMENT if refined.non_finite and refined.usable else None
            point = _Point(refined.z, refined.result, refined.grad, refined.loss)
            point, skipped, loss_after_step = self._update(point, step, refined.usable, scale, x.dtype, evaluate)
            maps = self.recorder.levels().get(self.main_factor)
            # The recorded maps hold the last pass's graph; released here so the step leaves no graph behind.
            self.recorder.reset()
        with torch.inference_mode():
            x.copy_(point.latent.to(x.dtype))
        self.note_skip(step, refinement_stopped)
        self.note_skip(step, skipped)
        record = StepRecord(
            step=step,
            sigma=float(sigma.flatten()[0]),
            loss_before=refined.initial_loss,
            loss_after_refinement=point.loss,
            refinement_iterations=refined.iterations,
            stepped=skipped is None and self.objective.guides(step, self.num_steps),
            step_size=step_size,
            loss_after_step=loss_after_step,
            skipped=skipped,
            refinement_stopped=refinement_stopped,
        )
        self.report.add(record, maps.mean.detach() if maps is not None else None)

    def _update(
        self, point: _Point, step: int, usable: bool, scale: torch.Tensor, dtype: torch.dtype, evaluate: Any
    ) -> tuple[_Point, str | None, float | None]:
        """The step's gradient update: (point after it, why it was skipped or None, the re-measured loss or None)."""
        if not usable:
            return point, NON_FINITE_LOSS, None
        if not self.objective.guides(step, self.num_steps):
            return point, None, None
        skipped = update_skip_reason(point.loss, point.grad, self.config.stop_below)
        if skipped == BELOW_TARGET:
            self.stopped_early = True
        if skipped is not None:
            return point, skipped, None
        candidate = point.latent - scale * point.grad
        if not finite_as(candidate, dtype):
            return point, NON_FINITE_LATENT, None
        loss_after_step = evaluate(candidate).loss if self.config.measure_after_step else None
        return _Point(candidate, point.result, point.grad, point.loss), None, loss_after_step
