"""Shared plumbing for tests that sample with the guided sampler on a real (tiny) ComfyUI model.

The prompt is the spec's example (a): "a pink sunflower and a yellow flamingo", with pink=2 → sunflower=3 and
yellow=6 → flamingo=7 in the CLIP context (spec §2.7 a).
"""

from __future__ import annotations

from typing import Any

import torch

PROMPT = "a pink sunflower and a yellow flamingo"


def fresh_model(harness: Any, checkpoint: str) -> tuple[Any, Any]:
    """MODEL and CLIP loaded anew from ``checkpoint``: weights still as ComfyUI's loader made them (inference tensors).

    The session's shared ``sd15`` fixture is not that: the first guided test releases its weights.
    """
    with torch.inference_mode():
        model, clip, _ = harness.node("CheckpointLoaderSimple").load_checkpoint(checkpoint)[:3]
    return model, clip


def syngen_config(harness: Any, objective: dict | None = None, **options: Any) -> Any:
    """A SynGen ``GuidanceConfig``: ``objective`` goes to ``make_objective``, ``options`` to ``GuidanceConfig``."""
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    return inputs.GuidanceConfig(objective=objectives.make_objective("syngen", **(objective or {})), **options)


def prompt_case(harness: Any, model: Any, clip: Any) -> dict:
    """``model``, encoded positive/negative conditioning and the hand-aligned bindings of :data:`PROMPT`."""
    types = harness.module("binding_losses.types")
    inputs = harness.module("guidance.inputs")
    with torch.inference_mode():
        positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
        negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
    layout = types.TokenLayout(
        bindings=(types.TokenBinding((3,), ((2,),)), types.TokenBinding((7,), ((6,),))),
        prompt_positions=tuple(range(1, 8)),
    )
    return {
        "model": model,
        "positive": positive,
        "negative": negative,
        "bindings": inputs.PromptBindings(prompt=PROMPT, layout=layout),
    }


def sample_guided(
    harness: Any,
    case: dict,
    config: Any,
    bindings: Any = None,
    model: Any = None,
    steps: int = 4,
    sampler_name: str = "euler",
    scheduler: str = "karras",
    latent: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    sampler_class: type | None = None,
    cfg: float = 5.0,
) -> tuple[torch.Tensor, Any]:
    """Sample with a BindingGuidedSampler (or ``sampler_class``) around ``sampler_name`` (CFG ``cfg``, seed 7),
    through the pack's one entry point ``guidance.sample.guided_sample``; returns (latent, report)."""
    entry = harness.module("guidance.sample")
    options = {} if sampler_class is None else {"sampler_class": sampler_class}
    result = entry.guided_sample(
        case["model"] if model is None else model, 7, steps, cfg, sampler_name, scheduler, case["positive"],
        case["negative"], torch.zeros(1, 4, 16, 16) if latent is None else latent,
        case["bindings"] if bindings is None else bindings, config, noise_mask=noise_mask, **options,
    )
    return result.samples, result.report


def sample_stock(
    case: dict,
    steps: int = 4,
    sampler_name: str = "euler",
    scheduler: str = "karras",
    latent: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same sampling with ComfyUI's stock KSampler path (no guidance)."""
    import comfy.sample

    latent = torch.zeros(1, 4, 16, 16) if latent is None else latent
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(
            case["model"],
            noise,
            steps,
            5.0,
            sampler_name,
            scheduler,
            case["positive"],
            case["negative"],
            latent,
            disable_pbar=True,
            seed=7,
        )


DESCENT_EPSILONS = 100
"""A guided update must lower the loss by at least this many float32 epsilons of the loss's magnitude: a drop
that float rounding cannot produce (the descent tests pick model, step size and prompt so it holds)."""


def assert_lowered(record: Any) -> None:
    """The step's update (``measure_after_step``) lowered the loss by more than float rounding could."""
    assert record.stepped and record.loss_after_step is not None, record
    drop = record.loss_before - record.loss_after_step
    floor = DESCENT_EPSILONS * torch.finfo(torch.float32).eps * abs(record.loss_before)
    assert drop >= floor, (
        f"step {record.step}: loss {record.loss_before:.7g} -> {record.loss_after_step:.7g} (drop {drop:.3g}, "
        f"needs >= {floor:.3g})"
    )


FP32_PREDICTION_TOLERANCE = 7.5e-6
"""Largest fp32 difference, relative to the result's largest magnitude, that still counts as the same prediction.

Measured on the tiny SD1.5 checkpoint (4 and 1 euler steps, 16×16, |x| up to 400-445): fast mode's split batch and
explicit attention at step size 0 differ from stock sampling by 1.0e-3 and 1.3e-3 (2.5e-6 and 2.8e-6 relative).
Guidance at step size 20 moves the result by 0.66 (fast) to 0.81 (faithful), so 1 % of its effect is 1.6e-5
relative: twice this bound, and a stray change of that size fails."""


def assert_same_prediction(actual: torch.Tensor, expected: torch.Tensor, model: Any) -> None:
    """``actual`` equals ``expected`` up to the rounding of the model's compute dtype.

    fp32 (CPU, CI): see :data:`FP32_PREDICTION_TOLERANCE`. A half-precision UNet (fp16 on a GPU) gives different
    roundings for a batch of one and a batch of two, and for explicit and fused attention, so there the
    tolerance is 1e-2 of the largest magnitude.
    """
    error = float((actual - expected).abs().max() / expected.abs().max())
    tolerance = FP32_PREDICTION_TOLERANCE if model.model.get_dtype() == torch.float32 else 1e-2
    assert error < tolerance, f"relative error {error:.2e} (tolerance {tolerance:.1e})"
