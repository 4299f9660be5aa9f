"""What every guidance mode shares for one sampling run: capture, recorder, objective, report, and the pure rules of
an update (its scale, whether it may be applied).

A mode is a :class:`GuidanceRun` subclass with ``before_call``/``after_call``: ``faithful_mode.FaithfulRun`` and
``fast_mode.FastRun``. The sampler's proxy calls them around the first model call of each planned step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

from ..attention_patch import capture_for_model
from ..binding_losses.types import TokenLayout
from ..kernels.cpu_convolution import KernelTimings
from ..tokens import find_words
from .errors import BindingGuidanceError
from .gradients import LossScale
from .inputs import GuidanceConfig, PromptBindings
from .prompt_match import matching_entry
from .report import GuidanceReport

log = logging.getLogger("binding_guidance")

NON_FINITE_LOSS = "non-finite loss or gradient"
ZERO_LOSS = "the loss is zero, so there is nothing to guide"
BELOW_TARGET = "the loss is below stop_below, so guidance stops"
NON_FINITE_LATENT = "the update would make the latent non-finite"
NON_FINITE_REFINEMENT = "a refinement iteration would make the latent or its loss non-finite"


def update_scale(
    model_sampling: Any, step_size: float, sigma: torch.Tensor, like: torch.Tensor, denoise_mask: Any
) -> torch.Tensor:
    """Factor of ∇ₓL in the latent update: z' = z − α∇_z L on the UNet input z = c·x is x' = x − (α/c²)∇ₓL
    (spec §1.6.3), with c from the model's own ``model_sampling.calculate_input``. Only the masked region of an
    inpainting latent moves."""
    c = model_sampling.calculate_input(sigma.to(like.dtype), torch.ones_like(like))
    scale = step_size / (c * c)
    if denoise_mask is not None:
        scale = scale * denoise_mask.detach().clone().float()
    return scale


def all_finite(loss: float, grad: torch.Tensor) -> bool:
    """Whether a loss and its gradient are finite everywhere."""
    return math.isfinite(loss) and bool(torch.isfinite(grad).all())


def finite_as(latent: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every element of ``latent`` stays finite once stored in ``dtype`` (the sampler's tensor)."""
    return bool(torch.isfinite(latent.to(dtype)).all())


def update_skip_reason(loss: float, grad: torch.Tensor, stop_below: float | None) -> str | None:
    """Why the update of a guided step with this loss and gradient is not applied, or None to apply it."""
    if not all_finite(loss, grad):
        return NON_FINITE_LOSS
    if loss == 0.0:
        return ZERO_LOSS
    if stop_below is not None and loss < stop_below:
        return BELOW_TARGET
    return None


def resolve_layout(bindings: PromptBindings, config: GuidanceConfig) -> TokenLayout:
    """The bindings' layout, with the config's explicit subject words resolved to token positions."""
    if not config.subject_words:
        return bindings.layout
    if bindings.clean is None or bindings.table is None:
        raise BindingGuidanceError(
            "config.words needs bindings from a Parse Bindings node (they carry the token table)."
        )
    try:
        subjects = find_words(bindings.clean, bindings.table, config.subject_words)
    except ValueError as error:
        raise BindingGuidanceError(f"config words: {error} Use words that appear in the prompt.") from error
    return dataclasses.replace(bindings.layout, subjects=subjects)


class GuidanceRun:
    """Guidance state for one sampling run: capture, recorder, objective and report (base of every mode)."""

    def __init__(
        self,
        guider: Any,
        bindings: PromptBindings,
        config: GuidanceConfig,
        sigmas: torch.Tensor,
        kernel_timings: KernelTimings | None = None,
    ) -> None:
        self.guider = guider
        self.sigmas = sigmas.detach().float().cpu()
        self.num_steps = len(sigmas) - 1
        self.bindings = bindings
        self.layout = resolve_layout(bindings, config)
        self.config = config
        self.objective = config.objective
        self.active = self.objective.active(self.layout)
        problem = self.objective.requirement_error(self.layout) if self.active else None
        if problem is not None:
            raise BindingGuidanceError(f"config: {problem}")
        self.text_attention = bindings.text_self_attention_for(self.objective)  # T-SAM only
        if self.active and self.text_attention is None and "tsam" in str(self.objective.name).split("+"):
            raise BindingGuidanceError(
                "config: T-SAM reads the text encoder's self-attention of the prompt, and these bindings carry no "
                "CLIP to compute it from. Make the bindings with Parse Bindings, or choose another method."
            )
        base_model = guider.inner_model
        # The model family picks the capture (UNet cross-attention or DiT joint attention); unsupported
        # families are refused here, by name, before the first model evaluation.
        self.capture = capture_for_model(base_model, config.main_factor, self.objective.levels,
                                         dit_blocks=config.dit_blocks, joint_normalization=config.joint_normalization,
                                         dit_checkpointing=config.dit_checkpointing)
        self.main_factor = self.capture.main_factor
        self.recorder = self.capture.recorder(stop_early=config.stop_forward_early)
        self.model_sampling = base_model.model_sampling
        self.loss_scale = LossScale.for_dtype(getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype())
        self.kernel_timings = kernel_timings if kernel_timings is not None else KernelTimings()
        self.report = GuidanceReport(main_factor=self.main_factor, num_steps=self.num_steps)
        if not self.active:
            self.report.inactive_reason = "the prompt has no bindings this method can guide"
        self.positive = self._guidance_positive(guider, bindings)
        self.stopped_early = False
        self._warned: set[str] = set()

    @staticmethod
    def _guidance_positive(guider: Any, bindings: PromptBindings) -> list:
        """The positive conditioning entries the guidance forward runs on."""
        positive = guider.conds.get("positive") if hasattr(guider, "conds") else None
        if not positive:
            raise BindingGuidanceError("Binding guidance needs a positive conditioning; the guider has none.")
        # The guidance forward uses the positive entry that comes from the parsed prompt; none: refused here.
        return [matching_entry(bindings.fingerprint, positive, bindings.prompt, bindings.positive_prompts)]

    def wants_step(self, step: int) -> bool:
        """Whether step ``step`` gets any guidance (a gradient step or refinement)."""
        return (
            self.objective.guides(step, self.num_steps) or self.objective.refinement(step, self.num_steps) is not None
        )

    def intercepts(self, step: int) -> bool:
        """Whether the first model call of ``step`` must pass through this run."""
        return self.wants_step(step)

    def before_call(
        self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict
    ) -> dict:
        """Called before the first model call of a planned ``step``; returns the ``model_options`` that call uses."""
        raise NotImplementedError

    def after_call(self, step: int) -> None:
        """Called after the first model call of a planned ``step``."""

    def objective_loss(self, levels: dict, step: int) -> Any:
        """The objective's LossResult for the recorded maps ``levels`` at ``step``."""
        if self.main_factor not in levels:
            raise BindingGuidanceError("No cross-attention maps were recorded at the main level during guidance.")
        return self.objective.loss(levels, self.layout, step, self.num_steps, text_self_attention=self.text_attention)

    def check_planned_sigma(self, sigma: torch.Tensor, step: int) -> None:
        """Refuse to guide a call whose sigma is not the planned step's (the step plan went wrong)."""
        expected = float(self.sigmas[step])
        seen = float(sigma.flatten()[0])
        if abs(seen - expected) > 1e-4 * max(1.0, expected):
            raise BindingGuidanceError(
                f"Internal check failed: the model call planned for step {step} ran at sigma {seen:.5f}, not the "
                f"step's sigma {expected:.5f}. Please report this with your sampler and scheduler."
            )

    def note_skip(self, step: int, reason: str | None) -> None:
        """Log a skipped update (the report records it too); once per reason and run, and only for failures."""
        if reason is None or reason in (ZERO_LOSS, BELOW_TARGET) or reason in self._warned:
            return
        self._warned.add(reason)
        log.warning(
            "Binding guidance: step %d: %s; skipping that update (further occurrences in this run are skipped "
            "without a log line; the node's report lists them).",
            step,
            reason,
        )
