"""Fast mode: take the binding gradient from the step's own model call instead of a separate guidance forward.

Faithful mode (the references) runs an extra conditional UNet forward with grad at every guided step, moves the
latent, and only then runs the step's normal CFG forward. Fast mode drops that extra forward: during the step's
normal model call, the conditional rows run with grad enabled and the attention maps recorded; when the last
recorded layer has run, the loss and its gradient with respect to the model input are computed on the spot and the
rest of the forward continues without grad. The unconditional rows run exactly as before. The resulting update
is applied to the latent one step later (see ``docs/guidance_modes.md``).

:class:`ConditionalGradientCapture` is a ComfyUI ``model_function_wrapper`` that does this for one model call;
:class:`FastRun` is the guidance mode that installs it and applies the update one step later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..attention_patch import AttentionCapture
from ..binding_losses.types import AttentionLevel
from ..kernels.cpu_convolution import KernelTimings, guidance_convolutions
from ..kernels.differentiable_attention import with_differentiable_attention
from .errors import BindingGuidanceError
from .faithful_mode import FaithfulRun
from .gradients import GradientOverflowError, LossScale, loss_and_gradient
from .model_loading import single_device
from .report import StepRecord
from .run import BELOW_TARGET, NON_FINITE_LATENT, finite_as, update_scale, update_skip_reason

log = logging.getLogger("binding_guidance")

ModelFunctionWrapper = Callable[[Callable, dict], torch.Tensor]


@dataclass
class CapturedGradient:
    """The loss of one model call's conditional rows and its gradient with respect to their model input."""

    loss: float
    grad: torch.Tensor | None
    """``[B, C, H, W]`` fp32, one row per latent in the batch; None when the fp16 backward overflowed (the step
    then gets no update, and the lowered loss scale serves the next steps)."""
    maps: torch.Tensor | None
    """Head-averaged maps at the main level (for the report's attention preview)."""


def _map_tensors(value: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``transform`` applied to every tensor inside its dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return transform(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, transform) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, transform) for item in value)
    return value


def _take_rows(value: Any, rows: slice, batch: int) -> Any:
    """``value`` restricted to batch rows ``rows``: every tensor whose first dimension is the batch is indexed."""
    return _map_tensors(value, lambda t: t[rows] if t.ndim > 0 and t.shape[0] == batch else t)


def _own_tensors(value: Any) -> Any:
    """Ordinary (non-inference) copies of the tensors in ``value``, so autograd may save them for backward."""
    return _map_tensors(value, lambda t: t.clone() if t.is_inference() else t)


def _sub_call(args: dict, rows: slice, chunks: list[int], uuids: list | None) -> dict:
    """The wrapper arguments of a model call restricted to some of its batch rows (whole cond/uncond chunks)."""
    batch = args["input"].shape[0]
    c = dict(args["c"])
    transformer_options = dict(c.get("transformer_options", {}))
    c = {key: _take_rows(value, rows, batch) for key, value in c.items() if key != "transformer_options"}
    # transformer_options holds patch objects and per-latent (not per-row) sigmas: only its chunk lists change.
    transformer_options["cond_or_uncond"] = list(chunks)
    if uuids is not None:
        transformer_options["uuids"] = list(uuids)
    c["transformer_options"] = transformer_options
    return {
        "input": args["input"][rows],
        "timestep": _take_rows(args["timestep"], rows, batch),
        "c": c,
        "cond_or_uncond": list(chunks),
    }


class ConditionalGradientCapture:
    """A ``model_function_wrapper`` that computes the binding gradient from the first conditional chunk of a call.

    ``loss_of_levels`` maps the recorded maps (factor → AttentionLevel) to the objective's LossResult. The capture
    fires once; later calls (and calls without a conditional chunk) pass through unchanged. An existing wrapper
    (``previous``) still runs every sub-call.
    """

    def __init__(
        self,
        attention: AttentionCapture,
        loss_of_levels: Callable[[dict[int, AttentionLevel]], Any],
        main_factor: int,
        previous: ModelFunctionWrapper | None = None,
        differentiable_attention: bool = True,
        loss_scale: LossScale | None = None,
        cpu_convolution: str = "default",
        kernel_timings: KernelTimings | None = None,
    ) -> None:
        self.recorder = attention.recorder(stop_early=False, on_complete=self._on_layers_recorded)
        self.loss_of_levels = loss_of_levels
        self.main_factor = main_factor
        self.previous = previous
        self.differentiable_attention = differentiable_attention
        self.loss_scale = loss_scale
        self.cpu_convolution = cpu_convolution
        self.kernel_timings = kernel_timings
        self.captured: CapturedGradient | None = None
        self._leaf: torch.Tensor | None = None

    def model_options(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with this capture installed as the model function wrapper."""
        options = dict(model_options)
        options["model_function_wrapper"] = self
        return options

    def _run(self, apply_model: Callable, args: dict) -> torch.Tensor:
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __call__(self, apply_model: Callable, args: dict) -> torch.Tensor:
        chunks = list(args["cond_or_uncond"])
        if self.captured is not None or 0 not in chunks:
            return self._run(apply_model, args)
        batch = args["input"].shape[0]
        size = batch // len(chunks)
        first = chunks.index(0)
        uuids = args["c"].get("transformer_options", {}).get("uuids")
        before, after = slice(0, first * size), slice((first + 1) * size, batch)
        cond_rows = slice(first * size, (first + 1) * size)

        # On CPU the graph part of the conditional forward runs on timed convolution kernels: a plain step has no
        # graph. When the call is split, every chunk, the conditional remainder included, runs as a smaller batch
        # than a plain step's only because of guidance, so its forward-only convolutions get them too.
        split = len(chunks) > 1
        before_output = after_output = None
        with guidance_convolutions(
            self.cpu_convolution, args["input"].device, self.kernel_timings, forwards_without_graph=split
        ):
            cond_output = self._run_conditional(apply_model, _sub_call(args, cond_rows, [0], uuids and [uuids[first]]))
            if first > 0:
                before_call = _sub_call(args, before, chunks[:first], uuids and uuids[:first])
                before_output = self._run(apply_model, before_call)
            if first + 1 < len(chunks):
                after_call = _sub_call(args, after, chunks[first + 1 :], uuids and uuids[first + 1 :])
                after_output = self._run(apply_model, after_call)
        parts = [part for part in (before_output, cond_output, after_output) if part is not None]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _run_conditional(self, apply_model: Callable, args: dict) -> torch.Tensor:
        """The conditional chunk's forward, with a graph up to the last recorded layer."""
        self.recorder.reset()
        with torch.inference_mode(False), torch.enable_grad():
            leaf = args["input"].detach().clone().float().requires_grad_(True)
            self._leaf = leaf
            c = _own_tensors(args["c"])
            options = {"transformer_options": c["transformer_options"]}
            if self.differentiable_attention:  # before the recorder's patches, which wrap this override
                options = with_differentiable_attention(options)
            options = self.recorder.model_options_with_patches(options)
            c["transformer_options"] = options["transformer_options"]
            model_input = leaf.to(args["input"].dtype)
            timestep = args["timestep"].clone()
            output = self._run(apply_model, {**args, "input": model_input, "timestep": timestep, "c": c})
            self._leaf = None
            if self.captured is None:
                raise RuntimeError("Fast binding guidance: the recorded attention layers did not run.")
            return output.detach()

    def _on_layers_recorded(self) -> None:
        """Called inside the forward once the last recorded layer ran: loss, gradient, then no more graph."""
        if self._leaf is None:
            raise RuntimeError("Fast binding guidance: attention was recorded outside the conditional sub-call.")
        levels = self.recorder.levels()
        result = self.loss_of_levels(levels)
        grad: torch.Tensor | None
        try:
            loss, grad = loss_and_gradient(result, self._leaf, self.loss_scale)
        except GradientOverflowError as overflow:  # no second pass in fast mode: this step goes without its update
            log.info("Binding guidance (fast mode): %s; this step's update is skipped.", overflow)
            loss, grad = overflow.loss, None
        main = levels.get(self.main_factor)
        self.captured = CapturedGradient(
            loss=loss,
            grad=grad.detach().float() if grad is not None else None,
            maps=main.mean.detach() if main is not None else None,
        )
        # Drop the recorded maps now: they hold this forward's graph, whose saved-tensor hooks (activation
        # checkpointing) refer back to the transformer options and so to this capture; a cycle through autograd's
        # C++ nodes that Python's collector cannot free, which kept each fast run's graph and guider alive.
        self.recorder.reset()
        # The rest of this forward only produces the step's prediction: build no graph for it. The caller's
        # enable_grad() context restores the grad mode when the forward returns.
        torch.set_grad_enabled(False)


FP16_OVERFLOW = "fp16 gradient overflow (the loss scale is lowered for the next steps)"
LAST_STEP = "last step (fast mode has no later step to apply the update to)"


@dataclass
class _PendingCapture:
    """A fast-mode gradient capture installed for one model call."""

    capture: ConditionalGradientCapture
    sigma: torch.Tensor
    denoise_mask: Any


class FastRun(FaithfulRun):
    """Fast guidance: the gradient of step i comes from step i's own model call and moves the latent at step i+1.

    Steps with refinement iterate guidance passes at one step by design, so they run as faithful mode does. So does
    every step when the positive has several entries: the step's own call batches them in ComfyUI's order, and
    the first conditional chunk may be another entry than the one matching the bindings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._capture: _PendingCapture | None = None
        self._pending_update: tuple[int, torch.Tensor] | None = None
        entries = len(self.guider.conds.get("positive") or ())
        self.all_faithful = entries > 1
        if self.all_faithful:
            self.report.note = (
                f"fast mode guided the faithful way, since the positive has several positive entries ({entries}) "
                "and fast mode cannot tell which of them the step's own model call reads first"
            )

    def intercepts(self, step: int) -> bool:
        """Guided steps, and the step after a guided one (where its update lands)."""
        return self.wants_step(step) or (step > 0 and self.objective.guides(step - 1, self.num_steps))

    def before_call(
        self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict
    ) -> dict:
        """Apply the previous step's update, then install this step's gradient capture on its model call."""
        self._apply_pending_update(x, step)
        if self.stopped_early or not self.wants_step(step):
            return model_options
        if self.all_faithful or self.objective.refinement(step, self.num_steps) is not None:
            self.guide(x, sigma, step, denoise_mask, model_options)
            return model_options
        self.check_planned_sigma(sigma, step)
        capture = ConditionalGradientCapture(
            self.capture,
            lambda levels: self.objective_loss(levels, step),
            self.main_factor,
            previous=model_options.get("model_function_wrapper"),
            differentiable_attention=self.config.guidance_attention == "sdpa",
            loss_scale=self.loss_scale,
            cpu_convolution=self.config.cpu_convolution,
            kernel_timings=self.kernel_timings,
        )
        self._capture = _PendingCapture(capture, sigma.detach().clone(), denoise_mask)
        return capture.model_options(single_device(model_options))

    def after_call(self, step: int) -> None:
        """Turn the gradient captured during this step's model call into next step's update."""
        pending, self._capture = self._capture, None
        if pending is None:
            return
        captured = pending.capture.captured
        if captured is None:
            raise BindingGuidanceError(
                "Fast binding guidance: the step's model call had no conditional batch to read attention from."
            )
        step_size = float(self.objective.step_size(step, self.num_steps))
        skipped = self._update_from(captured, pending, step, step_size)
        self.note_skip(step, skipped)
        record = StepRecord(
            step=step,
            sigma=float(pending.sigma.flatten()[0]),
            loss_before=captured.loss,
            loss_after_refinement=captured.loss,
            refinement_iterations=0,
            stepped=skipped is None,
            step_size=step_size,
            skipped=skipped,
        )
        self.report.add(record, captured.maps)

    def _update_from(
        self, captured: CapturedGradient, pending: _PendingCapture, step: int, step_size: float
    ) -> str | None:
        """Queue next step's update from ``captured``; returns why there is none, or None."""
        if captured.grad is None:
            return FP16_OVERFLOW
        skipped = update_skip_reason(captured.loss, captured.grad, self.config.stop_below)
        if skipped == BELOW_TARGET:
            self.stopped_early = True
        if skipped is None and step + 1 >= self.num_steps:
            skipped = LAST_STEP
        if skipped is not None:
            return skipped
        with torch.inference_mode(False):
            grad = captured.grad
            sigma = pending.sigma.to(grad.device)
            scale = update_scale(self.model_sampling, step_size, sigma, grad, pending.denoise_mask)
            update = -(scale * grad)
        if not bool(torch.isfinite(update).all()):
            return NON_FINITE_LATENT
        self._pending_update = (step, update)
        return None

    def _apply_pending_update(self, x: torch.Tensor, step: int) -> None:
        pending, self._pending_update = self._pending_update, None
        if pending is None or pending[0] != step - 1:
            return
        with torch.inference_mode():
            updated = x + pending[1].to(device=x.device, dtype=x.dtype)
            if finite_as(updated, x.dtype):
                x.copy_(updated)
                return
        self.report.mark_skipped(pending[0], NON_FINITE_LATENT)
        self.note_skip(pending[0], NON_FINITE_LATENT)
