"""The binding-guided sampler: a ``comfy.samplers.Sampler`` that wraps any built-in k-diffusion sampler.

At the first model evaluation of each guided step it runs one conditional-only UNet forward with grad, records
the cross-attention maps, computes the binding loss, and moves the sampler's own latent ``x`` in place. The
sampler then continues from the moved latent with its multistep history and noise unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import comfy.samplers
import comfy.utils
import torch

from ..attention_patch import (
    AttentionRecorder,
    RecordingComplete,
    choose_main_factor,
    layers_at,
    require_unet,
)
from ..attention_patch.differentiable_attention import with_differentiable_attention
from ..binding_losses.refinement import ProgressCallback, refine
from ..binding_losses.types import TokenLayout
from ..tokens import find_words
from .cpu_convolution import guidance_convolutions
from .errors import BindingGuidanceError
from .fast_mode import ConditionalGradientCapture
from .gradients import GradientOverflowError, LossScale, loss_and_gradient
from .inference_tensors import release_inference_tensors
from .inputs import GuidanceConfig, PromptBindings
from .model_loading import require_classic, single_device
from .prompt_match import matching_entry
from .report import GuidanceReport, StepRecord
from .step_plan import UNSUPPORTED_SAMPLERS, first_evaluation_calls

log = logging.getLogger("binding_guidance")


def sampler_name_of(sampler: Any) -> str:
    """Best-effort name of a KSAMPLER's algorithm, e.g. ``"euler"`` or ``"uni_pc"``."""
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", "") or ""
    for prefix in ("sample_", ""):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    aliases = {
        "unipc": "uni_pc",
        "unipc_bh2": "uni_pc_bh2",
        "dpm_fast_function": "dpm_fast",
        "dpm_adaptive_function": "dpm_adaptive",
    }
    return aliases.get(name, name)


def check_sampler_supported(sampler: Any) -> None:
    """Refuse samplers that cannot carry a latent update, with a message that says what to use instead."""
    if not hasattr(sampler, "sampler_function"):
        raise BindingGuidanceError(
            "Binding guidance wraps ComfyUI's built-in k-diffusion samplers (KSamplerSelect); "
            f"got {type(sampler).__name__}. Connect a KSamplerSelect SAMPLER to the Binding-Guided Sampler node."
        )
    name = sampler_name_of(sampler)
    if name in UNSUPPORTED_SAMPLERS:
        raise BindingGuidanceError(
            f"sampler_name '{name}' cannot be guided: {UNSUPPORTED_SAMPLERS[name]}. "
            "Choose another sampler, e.g. euler, dpmpp_2m or ddim."
        )


class _GuidedDenoiser:
    """Stands between the k-diffusion sampler and ComfyUI's denoiser, applying guidance at planned calls."""

    def __init__(self, denoiser: Any, run: GuidanceRun, plan: dict[int, int]) -> None:
        self._denoiser = denoiser
        self._run = run
        self._plan = plan
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._denoiser, name)

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        denoise_mask: Any = None,
        model_options: dict | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        model_options = model_options if model_options is not None else {}
        step = self._plan.get(self._calls)
        self._calls += 1
        if step is None:
            return self._denoiser(x, sigma, denoise_mask, model_options=model_options, seed=seed)
        call_options = self._run.before_call(x, sigma, step, denoise_mask, model_options)
        denoised = self._denoiser(x, sigma, denoise_mask, model_options=call_options, seed=seed)
        self._run.after_call(step)
        return denoised


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


@dataclasses.dataclass
class _PendingCapture:
    """A fast-mode gradient capture installed for one model call."""

    capture: ConditionalGradientCapture
    sigma: torch.Tensor
    denoise_mask: Any


class GuidanceRun:
    """Guidance state for one sampling run: layers, recorder, objective and the report."""

    def __init__(self, guider: Any, bindings: PromptBindings, config: GuidanceConfig, sigmas: torch.Tensor) -> None:
        self.guider = guider
        self.sigmas = sigmas.detach().float().cpu()
        num_steps = len(sigmas) - 1
        self.bindings = bindings
        self.layout = resolve_layout(bindings, config)
        self.config = config
        self.objective = config.objective
        self.active = self.objective.active(self.layout)
        problem = self.objective.requirement_error(self.layout) if self.active else None
        if problem is not None:
            raise BindingGuidanceError(f"config: {problem}")
        self.text_attention = bindings.text_self_attention_for(self.objective)  # T-SAM only
        self.num_steps = num_steps
        base_model = guider.inner_model
        all_layers = require_unet(base_model)  # refuses DiT/MMDiT models, naming the family
        self.main_factor = choose_main_factor(all_layers, config.main_factor)
        wanted = {f for f in self.objective.levels(self.main_factor) if f >= 1}
        self.layers = layers_at(all_layers, wanted)
        if not self.layers:
            raise BindingGuidanceError(f"The model has no cross-attention layers at factors {sorted(wanted)}.")
        self.recorder = AttentionRecorder(self.layers, stop_early=config.stop_forward_early)
        self.model_sampling = base_model.model_sampling
        self.loss_scale = LossScale.for_dtype(getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype())
        self.report = GuidanceReport(main_factor=self.main_factor, num_steps=num_steps)
        positive = guider.conds.get("positive") if hasattr(guider, "conds") else None
        if not positive:
            raise BindingGuidanceError("Binding guidance needs a positive conditioning; the guider has none.")
        # The guidance forward uses the positive entry that comes from the parsed prompt; none: refused here.
        self.positive = [matching_entry(bindings.fingerprint, positive, bindings.prompt, bindings.positive_prompts)]
        self._warned_non_finite = False
        self.stopped_early = False
        self._capture: _PendingCapture | None = None
        self._pending_update: tuple[int, torch.Tensor] | None = None

    def wants_step(self, step: int) -> bool:
        """Whether step ``step`` gets any guidance (a gradient step or refinement)."""
        return (
            self.objective.guides(step, self.num_steps) or self.objective.refinement(step, self.num_steps) is not None
        )

    def intercepts(self, step: int) -> bool:
        """Whether the first model call of ``step`` passes through this run (guidance, or fast mode's late update)."""
        if self.wants_step(step):
            return True
        return self.config.mode == "fast" and step > 0 and self.objective.guides(step - 1, self.num_steps)

    def before_call(
        self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict
    ) -> dict:
        """Guidance at the first model call of ``step``; returns the ``model_options`` that call must use."""
        if self.config.mode != "fast":
            self.guide(x, sigma, step, denoise_mask, model_options)
            return model_options
        self._apply_pending_update(x, step)
        if self.stopped_early or not self.wants_step(step):
            return model_options
        if self.objective.refinement(step, self.num_steps) is not None:
            # Refinement iterates guidance passes at one step by design; fast mode runs those steps as faithful.
            self.guide(x, sigma, step, denoise_mask, model_options)
            return model_options
        self._check_planned_sigma(sigma, step)
        capture = ConditionalGradientCapture(
            self.layers,
            lambda levels: self._objective_loss(levels, step),
            self.main_factor,
            previous=model_options.get("model_function_wrapper"),
            differentiable_attention=self.config.guidance_attention == "sdpa",
            loss_scale=self.loss_scale,
            cpu_convolution=self.config.cpu_convolution,
        )
        self._capture = _PendingCapture(capture, sigma.detach().clone(), denoise_mask)
        return capture.model_options(single_device(model_options))

    def after_call(self, step: int) -> None:
        """Fast mode: turn the gradient captured during this step's model call into next step's update."""
        pending, self._capture = self._capture, None
        if pending is None:
            return
        captured = pending.capture.captured
        if captured is None:
            raise BindingGuidanceError(
                "Fast binding guidance: the step's model call had no conditional batch to read attention from."
            )
        step_size = float(self.objective.step_size(step, self.num_steps))
        stepped = False
        if (
            captured.grad is not None
            and self._finite(captured.loss, captured.grad, step)
            and captured.loss != 0.0
            and not self._reached_target(captured.loss)
            and step + 1 < self.num_steps
        ):
            with torch.inference_mode(False):
                grad = captured.grad
                scale = self._update_scale(step_size, pending.sigma.to(grad.device), grad, pending.denoise_mask)
                self._pending_update = (step, -(scale * grad))
            stepped = True
        record = StepRecord(
            step=step,
            sigma=float(pending.sigma.flatten()[0]),
            loss_before=captured.loss,
            loss_after_refinement=captured.loss,
            refinement_iterations=0,
            stepped=stepped,
            step_size=step_size,
        )
        self.report.add(record, captured.maps)

    def _apply_pending_update(self, x: torch.Tensor, step: int) -> None:
        pending, self._pending_update = self._pending_update, None
        if pending is None or pending[0] != step - 1:
            return
        with torch.inference_mode():
            x.add_(pending[1].to(device=x.device, dtype=x.dtype))

    def _reached_target(self, loss: float) -> bool:
        """Early exit: once the loss is below ``config.stop_below``, the remaining steps are not guided."""
        threshold = self.config.stop_below
        if threshold is not None and loss < threshold:
            self.stopped_early = True
        return self.stopped_early

    def _loss(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict, step: int) -> Any:
        self.recorder.reset()
        options = self.recorder.model_options_with_patches(single_device(model_options))
        if self.config.guidance_attention == "sdpa":
            options = with_differentiable_attention(options)
        try:
            with guidance_convolutions(self.config.cpu_convolution, x.device):
                comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.positive], x, sigma, options)
        except RecordingComplete:
            pass
        return self._objective_loss(self.recorder.levels(), step)

    def _objective_loss(self, levels: dict, step: int) -> Any:
        if self.main_factor not in levels:
            raise BindingGuidanceError("No cross-attention maps were recorded at the main level during guidance.")
        return self.objective.loss(levels, self.layout, step, self.num_steps, text_self_attention=self.text_attention)

    def _update_scale(
        self, step_size: float, sigma: torch.Tensor, like: torch.Tensor, denoise_mask: Any
    ) -> torch.Tensor:
        """Factor of ∇ₓL in the latent update: z' = z − α∇_z L on the UNet input z = c·x is x' = x − (α/c²)∇ₓL
        (spec §1.6.3). Only the masked region of an inpainting latent moves."""
        c = self.model_sampling.calculate_input(sigma.to(like.dtype), torch.ones_like(like))
        scale = step_size / (c * c)
        if denoise_mask is not None:
            scale = scale * denoise_mask.detach().clone().float()
        return scale

    def _check_planned_sigma(self, sigma: torch.Tensor, step: int) -> None:
        expected = float(self.sigmas[step])
        seen = float(sigma.flatten()[0])
        if abs(seen - expected) > 1e-4 * max(1.0, expected):
            raise BindingGuidanceError(
                f"Internal check failed: the model call planned for step {step} ran at sigma {seen:.5f}, not the "
                f"step's sigma {expected:.5f}. Please report this with your sampler and scheduler."
            )

    def _loss_and_grad(
        self, latent: torch.Tensor, sigma: torch.Tensor, model_options: dict, step: int
    ) -> tuple[Any, torch.Tensor, float]:
        while True:
            leaf = latent.detach().requires_grad_(True)
            result = self._loss(leaf, sigma, model_options, step)
            try:
                loss, grad = loss_and_gradient(result, leaf, self.loss_scale)
            except GradientOverflowError:
                continue  # the scale was lowered (it ends at 1, which cannot overflow): one more guidance pass
            return result, grad, loss

    def _finite(self, loss: float, grad: torch.Tensor, step: int) -> bool:
        if math.isfinite(loss) and bool(torch.isfinite(grad).all()):
            return True
        self._warn_non_finite(step)
        return False

    def _warn_non_finite(self, step: int) -> None:
        if not self._warned_non_finite:
            log.warning(
                "Binding guidance: non-finite loss or gradient at step %d; skipping that update "
                "(further occurrences in this run are skipped silently).",
                step,
            )
            self._warned_non_finite = True

    @staticmethod
    def _refinement_progress() -> ProgressCallback:
        """Refinement can take many UNet passes at one step: show them on the node's progress bar."""
        bar: comfy.utils.ProgressBar | None = None

        def advance(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = comfy.utils.ProgressBar(total)
            bar.update_absolute(done, total)

        return advance

    def guide(self, x: torch.Tensor, sigma: torch.Tensor, step: int, denoise_mask: Any, model_options: dict) -> None:
        """Apply this step's guidance to the sampler's latent ``x`` in place."""
        if not self.wants_step(step) or self.stopped_early:
            return
        self._check_planned_sigma(sigma, step)
        step_size = float(self.objective.step_size(step, self.num_steps))
        with torch.inference_mode(False), torch.enable_grad():
            sigma_work = sigma.detach().clone()
            start = x.detach().clone().float()
            scale = self._update_scale(step_size, sigma_work, start, denoise_mask)
            refined = refine(
                lambda z: self._loss_and_grad(z, sigma_work, model_options, step)[:2],
                start,
                self.objective,
                step,
                self.num_steps,
                scale,
                on_iteration=self._refinement_progress(),
            )
            if refined.non_finite:
                self._warn_non_finite(step)
            latent, grad, loss = refined.z, refined.grad, refined.loss
            stepped, loss_after_step = False, None
            if (
                refined.usable
                and self.objective.guides(step, self.num_steps)
                and loss != 0.0
                and not self._reached_target(loss)
            ):
                latent = latent - scale * grad
                stepped = True
                if self.config.measure_after_step:
                    loss_after_step = self._loss_and_grad(latent, sigma_work, model_options, step)[2]
            maps = self.recorder.levels().get(self.main_factor)
        with torch.inference_mode():
            x.copy_(latent.to(x.dtype))
        record = StepRecord(
            step=step,
            sigma=float(sigma.flatten()[0]),
            loss_before=refined.initial_loss,
            loss_after_refinement=loss,
            refinement_iterations=refined.iterations,
            stepped=stepped,
            step_size=step_size,
            loss_after_step=loss_after_step,
        )
        self.report.add(record, maps.mean.detach() if maps is not None else None)


class BindingGuidedSampler(comfy.samplers.Sampler):
    """Wraps a built-in k-diffusion SAMPLER and applies binding guidance during sampling."""

    run_class: type[GuidanceRun] = GuidanceRun
    """The per-run guidance state (benchmarks substitute a subclass that also probes losses)."""

    def __init__(self, inner: Any, bindings: PromptBindings, config: GuidanceConfig) -> None:
        check_sampler_supported(inner)
        self.inner = inner
        self.bindings = bindings
        self.config = config
        self.last_report: GuidanceReport | None = None

    def max_denoise(self, model_wrap: Any, sigmas: torch.Tensor) -> bool:
        return self.inner.max_denoise(model_wrap, sigmas)

    def sample(
        self,
        model_wrap: Any,
        sigmas: torch.Tensor,
        extra_args: dict,
        callback: Any,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        inner = self.inner
        num_steps = len(sigmas) - 1
        run = self.run_class(model_wrap, self.bindings, self.config, sigmas)
        self.last_report = run.report
        if not run.active:
            log.info("Binding guidance: the prompt has no bindings; sampling without guidance.")
        else:
            require_classic(getattr(model_wrap, "model_patcher", None))
            replaced = release_inference_tensors(model_wrap.inner_model)
            if replaced:
                log.debug("Binding guidance: made %d inference-mode weights usable for backward.", replaced)

        # Mirrors KSAMPLER.sample, with the guidance proxy placed outside the inpaint blend so that the
        # in-place update reaches the sampler's own state tensor.
        extra_args["denoise_mask"] = denoise_mask
        denoiser = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        denoiser.latent_image = latent_image
        if inner.inpaint_options.get("random", False):
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            denoiser.noise = (
                torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
            )
        else:
            denoiser.noise = noise
        x = model_wrap.inner_model.model_sampling.noise_scaling(
            sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas)
        )

        plan: dict[int, int] = {}
        if run.active:
            plan = self._plan(run, denoiser, x, sigmas, extra_args)
        guided = _GuidedDenoiser(denoiser, run, plan)

        k_callback = None
        if callback is not None:
            k_callback = lambda info: callback(info["i"], info["denoised"], info["x"], num_steps)  # noqa: E731
        samples = inner.sampler_function(
            guided, x, sigmas, extra_args=extra_args, callback=k_callback, disable=disable_pbar, **inner.extra_options
        )
        return model_wrap.inner_model.model_sampling.inverse_noise_scaling(sigmas[-1], samples)

    def _plan(
        self, run: GuidanceRun, denoiser: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict
    ) -> dict[int, int]:
        first_calls, _ = first_evaluation_calls(
            self.inner.sampler_function, self.inner.extra_options, denoiser, x, sigmas, extra_args
        )
        plan: dict[int, int] = {}
        for step in range(run.num_steps):
            if not run.intercepts(step):
                continue
            call = first_calls[step]
            if call is None:
                raise BindingGuidanceError(
                    f"Sampler '{sampler_name_of(self.inner)}' did not report step {step}; binding guidance cannot find "
                    "where to apply it. Choose another sampler (euler, dpmpp_2m, ddim, ...)."
                )
            plan[call] = step
        return plan
