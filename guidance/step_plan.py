"""Which model call of a k-diffusion sampler is the first evaluation of each step.

Most samplers evaluate the model once per step, at ``sigmas[i]``. Heun-like and 2S samplers evaluate twice,
and their second evaluation can land exactly on ``sigmas[i+1]``, so matching calls by sigma picks the wrong one.
Instead, the inner sampler is dry-run against a trivial denoiser that records its calls. The first evaluation of
step ``i`` is the last call before the sampler's ``callback(i)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Samplers whose model input is not the sampler's state, or that ignore the schedule's sigmas.
UNSUPPORTED_SAMPLERS: dict[str, str] = {
    "uni_pc": "UniPC passes the model a rescaled copy of its state, so a latent update would be lost",
    "uni_pc_bh2": "UniPC passes the model a rescaled copy of its state, so a latent update would be lost",
    "dpm_fast": "it steps on its own sigma grid, not the scheduler's steps",
    "dpm_adaptive": "it chooses its own adaptive steps, not the scheduler's steps",
}


class _RecordingDenoiser:
    """Stands in for the real denoiser in a dry run: returns zeros and records each call's sigma."""

    def __init__(self, real_denoiser: Any) -> None:
        self.inner_model = real_denoiser.inner_model  # attribute reads only (model_sampling, model_patcher)
        self.calls: list[float] = []

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        denoise_mask: Any = None,
        model_options: dict | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        self.calls.append(float(sigma.flatten()[0]))
        denoised = torch.zeros_like(x)
        # cfg_pp samplers read the uncond prediction through a post-CFG hook; feed them the same zeros.
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            denoised = fn(
                {
                    "denoised": denoised,
                    "cond": x,
                    "uncond": x,
                    "cond_scale": 1.0,
                    "model": self.inner_model,
                    "uncond_denoised": denoised,
                    "cond_denoised": denoised,
                    "sigma": sigma,
                    "model_options": model_options,
                    "input": x,
                }
            )
        return denoised


def first_evaluation_calls(
    sampler_function: Callable,
    extra_options: dict,
    real_denoiser: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict,
) -> tuple[list[int | None], list[float]]:
    """Dry-run ``sampler_function`` and return, per step, the index of its first model call (None if unknown).

    Also returns the sigma seen by every call. Random number generator state is left untouched.
    """
    fake = _RecordingDenoiser(real_denoiser)
    first_call: list[int | None] = [None] * (len(sigmas) - 1)

    def on_step(info: dict) -> None:
        step = int(info["i"])
        if 0 <= step < len(first_call) and first_call[step] is None and fake.calls:
            first_call[step] = len(fake.calls) - 1

    dry_args = dict(extra_args)
    dry_args["model_options"] = dict(extra_args.get("model_options", {}))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        sampler_function(fake, x.clone(), sigmas, extra_args=dry_args, callback=on_step, disable=True, **extra_options)
    return first_call, fake.calls
