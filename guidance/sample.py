"""The one sampling entry point: latent, seed and sampler settings in, guided samples and the guidance report out.

Modelled on ``common_ksampler`` in ComfyUI's ``nodes.py``: the same noise, sigmas and ``comfy.sample`` call that
KSampler makes, with the k-diffusion sampler wrapped in a :class:`BindingGuidedSampler`. The Binding-Guided
KSampler node, the tests, the benchmarks and the demo all sample through :func:`guided_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.sample
import comfy.samplers
import torch

from .inputs import GuidanceConfig, PromptBindings
from .report import GuidanceReport
from .sampler import BindingGuidedSampler


@dataclass(frozen=True)
class GuidedSamples:
    """What :func:`guided_sample` returns: the denoised latent and the run's guidance report (``None`` unguided)."""

    samples: torch.Tensor
    report: GuidanceReport | None


def guided_sample(
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent_image: torch.Tensor,
    bindings: PromptBindings | None,
    config: GuidanceConfig | None,
    *,
    denoise: float = 1.0,
    noise_mask: torch.Tensor | None = None,
    batch_index: Any = None,
    callback: Any = None,
    disable_pbar: bool = True,
    sampler_class: type[BindingGuidedSampler] = BindingGuidedSampler,
) -> GuidedSamples:
    """Sample ``latent_image`` as KSampler would, with binding guidance from ``bindings`` and ``config``.

    With ``config=None`` the plain ``sampler_name`` runs through the same path (a baseline for benchmarks).
    ``sampler_class`` lets a benchmark or test substitute a subclass of :class:`BindingGuidedSampler`.
    Runs under inference mode, as ComfyUI's executor runs every node.
    """
    with torch.inference_mode():
        return _sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, bindings,
                       config, denoise, noise_mask, batch_index, callback, disable_pbar, sampler_class)


def _sample(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: Any,
            negative: Any, latent_image: torch.Tensor, bindings: PromptBindings | None, config: GuidanceConfig | None,
            denoise: float, noise_mask: torch.Tensor | None, batch_index: Any, callback: Any, disable_pbar: bool,
            sampler_class: type[BindingGuidedSampler]) -> GuidedSamples:
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image)
    noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    sigmas = comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler, denoise=denoise,
        model_options=model.model_options,
    ).sigmas
    sampler = comfy.samplers.sampler_object(sampler_name)
    if config is not None:
        if bindings is None:
            raise ValueError("guided_sample: a config needs bindings (from a Parse Bindings node).")
        sampler = sampler_class(sampler, bindings, config)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, latent, noise_mask=noise_mask, callback=callback,
        disable_pbar=disable_pbar, seed=seed,
    )
    return GuidedSamples(samples, getattr(sampler, "last_report", None))
