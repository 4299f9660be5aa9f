"""The binding-guided sampler: a ``comfy.samplers.Sampler`` that wraps any built-in k-diffusion sampler.

At the first model evaluation of each guided step, the guidance mode's run (``faithful_mode.FaithfulRun`` or
``fast_mode.FastRun``, chosen by ``GuidanceConfig.mode``) records the cross-attention maps, computes the binding loss,
and moves the sampler's own latent ``x`` in place. The sampler then continues from the moved latent with its
multistep history and noise unchanged.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import comfy.samplers
import torch

from ..kernels.cpu_convolution import KernelTimings
from .errors import BindingGuidanceError
from .faithful_mode import FaithfulRun
from .fast_mode import FastRun
from .inference_tensors import release_inference_tensors
from .inputs import GuidanceConfig, PromptBindings
from .model_loading import require_classic
from .report import GuidanceReport
from .run import GuidanceRun
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


class BindingGuidedSampler(comfy.samplers.Sampler):
    """Wraps a built-in k-diffusion SAMPLER and applies binding guidance during sampling."""

    run_classes: ClassVar[dict[str, type[GuidanceRun]]] = {"faithful": FaithfulRun, "fast": FastRun}
    """The run class of each ``GuidanceConfig.mode`` (benchmarks and tests substitute subclasses that probe)."""
    kernel_timings: ClassVar[KernelTimings] = KernelTimings()
    """The CPU convolution kernels that ``cpu_convolution = auto`` timed, shared by every guided run of this process
    (once per shape, like ``cudnn.benchmark``); a subclass or instance may hold a fresh one."""

    def __init__(self, inner: Any, bindings: PromptBindings, config: GuidanceConfig) -> None:
        check_sampler_supported(inner)
        self.inner = inner
        self.bindings = bindings
        self.config = config
        self.last_report: GuidanceReport | None = None

    def run_class(self) -> type[GuidanceRun]:
        """The run class of this sampler's guidance mode."""
        run_class = self.run_classes.get(self.config.mode)
        if run_class is None:
            raise BindingGuidanceError(
                f"config: guidance mode {self.config.mode!r} is not one of {', '.join(self.run_classes)}."
            )
        return run_class

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
        run = self.run_class()(model_wrap, self.bindings, self.config, sigmas, self.kernel_timings)
        self.last_report = run.report
        if not run.active:
            log.info("Binding guidance: the prompt has no bindings; sampling without guidance.")
        else:
            require_classic(getattr(model_wrap, "model_patcher", None))
            replaced = release_inference_tensors(model_wrap.inner_model)
            if replaced:
                log.debug("Binding guidance: made %d inference-mode weights usable for backward.", replaced)

        # From here on this mirrors comfy.samplers.KSAMPLER.sample (ComfyUI 0.3.75) statement for statement. The only
        # additions are the step plan and the guidance proxy around KSamplerX0Inpaint, outside the inpaint blend, so
        # that the in-place update reaches the sampler's own state tensor. tests/test_guided_sampler.py
        # (test_empty_bindings_match_stock_ksampler_exactly) guards it: unguided, it must equal KSampler bit for bit.
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
