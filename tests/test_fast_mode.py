"""Fast mode on a real (tiny) ComfyUI checkpoint: the gradient comes from the step's own model call.

What is asserted: the capture leaves the step's prediction unchanged, it measures the same loss faithful mode
measures at the same latent, its update lands one step later and lowers the loss seen there, the last step's
update is dropped, and it works with batches, masks, other nodes' model wrappers, refinement steps and SDXL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from devkit.guided_runs import assert_same_prediction, prompt_case, sample_guided, sample_stock


@pytest.fixture(scope="module")
def setup(harness: Any, sd15: tuple) -> dict:
    model, clip, _ = sd15
    return prompt_case(harness, model, clip)


def _config(harness: Any, mode: str, method: str = "syngen", **params: Any) -> Any:
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    # These tests compare fast mode with stock sampling to the model's rounding: they rely on the default CPU
    # convolution kernel being PyTorch's own, as in the stock pass (test_cpu_convolution checks the others agree).
    return inputs.GuidanceConfig(objective=objectives.make_objective(method, **params), mode=mode)


def _sample(harness: Any, setup: dict, config: Any, **options: Any) -> tuple[torch.Tensor, Any]:
    return sample_guided(harness, setup, config, **options)


def _stock(setup: dict, steps: int = 4, latent: torch.Tensor | None = None) -> torch.Tensor:
    return sample_stock(setup, steps=steps, latent=latent)


def test_capture_leaves_the_prediction_unchanged(harness: Any, setup: dict) -> None:
    """Step size 0: the split batch and the explicit attention in recorded layers give the stock result."""
    guided, report = _sample(harness, setup, _config(harness, "fast", scale_factor=0.0))
    assert [record.step for record in report.steps] == [0, 1]
    assert_same_prediction(guided, _stock(setup), setup["model"])


def test_fast_mode_measures_the_faithful_loss_at_the_first_step(harness: Any, setup: dict) -> None:
    """At step 0 both modes see the same latent, so the loss from the step's own call equals faithful mode's."""
    fast = _sample(harness, setup, _config(harness, "fast"))[1]
    faithful = _sample(harness, setup, _config(harness, "faithful"))[1]
    assert fast.steps[0].loss_before == pytest.approx(faithful.steps[0].loss_before, rel=1e-5)


def test_update_lands_one_step_later_and_lowers_the_loss_there(harness: Any, setup: dict) -> None:
    stock = _stock(setup)
    guided, report = _sample(harness, setup, _config(harness, "fast"))
    unguided_result, unguided = _sample(harness, setup, _config(harness, "fast", scale_factor=0.0))
    assert report.steps[0].loss_before == pytest.approx(unguided.steps[0].loss_before, rel=1e-5)
    assert report.steps[0].stepped
    # Step 1's model call sees the update computed at step 0.
    assert report.steps[1].loss_before < unguided.steps[1].loss_before
    # The update reaches the result in full. The step-size-0 run differs from stock sampling by rounding only
    # (split batch, explicit attention: 1.0e-3); the update moves the result by 0.66, so even 1 % of it shows.
    rounding = float((unguided_result - stock).abs().max())
    effect = float((guided - unguided_result).abs().max())
    assert effect > 100 * max(rounding, 1e-6), f"guidance moved the result by {effect:.3g}; rounding {rounding:.3g}"


def test_the_last_steps_gradient_is_dropped(harness: Any, setup: dict) -> None:
    """With one step there is no later step to carry the update: the result is the stock one."""
    guided, report = _sample(harness, setup, _config(harness, "fast", guided_fraction=1.0), steps=1)
    assert [(record.step, record.stepped) for record in report.steps] == [(0, False)]
    assert_same_prediction(guided, _stock(setup, steps=1), setup["model"])


def test_no_patch_or_wrapper_leaks_into_the_next_run(harness: Any, setup: dict) -> None:
    model = setup["model"]
    stock_before = _stock(setup)
    options_before = repr(model.model_options)
    _sample(harness, setup, _config(harness, "fast"))
    assert repr(model.model_options) == options_before
    assert torch.equal(_stock(setup), stock_before)


def test_batch_of_two_and_a_mask(harness: Any, setup: dict) -> None:
    latent = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 24)
    mask[..., :, :12] = 1.0
    guided, report = _sample(harness, setup, _config(harness, "fast"), latent=latent, noise_mask=mask)
    plain, _ = _sample(harness, setup, _config(harness, "fast", scale_factor=0.0), latent=latent, noise_mask=mask)
    for index in range(2):
        assert (guided[index, ..., :12] - plain[index, ..., :12]).abs().max() > 1e-3
    assert torch.allclose(guided[..., 12:], plain[..., 12:], rtol=1e-4, atol=1e-3)
    assert report.last_maps is not None and report.last_maps.shape[0] == 2


def test_another_nodes_model_wrapper_still_runs(harness: Any, setup: dict) -> None:
    """A model_function_wrapper installed by another node runs for every part of the split call."""
    calls: list[list[int]] = []

    def counting_wrapper(apply_model: Any, args: dict) -> torch.Tensor:
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = setup["model"].clone()
    model.set_model_unet_function_wrapper(counting_wrapper)
    guided, report = _sample(harness, setup, _config(harness, "fast"), model=model)
    assert len(report.steps) == 2
    # Guided steps 0 and 1 split their call into a conditional and an unconditional part; steps 2, 3 do not.
    assert sorted(map(tuple, calls[:2])) == [(0,), (1,)]
    assert len(calls) == 2 + 2 + 1 + 1
    assert torch.isfinite(guided).all()


def test_refinement_steps_run_as_in_faithful_mode(harness: Any, setup: dict) -> None:
    """Attend-and-Excite refines at steps 0, 2, 4 of 10 with its own passes; steps 1 and 3 use the fast capture."""
    config = _config(harness, "fast", "attend_and_excite", max_refinement_steps=1)
    guided, report = _sample(harness, setup, config, steps=10)
    assert [record.step for record in report.steps] == [0, 1, 2, 3, 4]
    assert [record.refinement_iterations for record in report.steps] == [1, 0, 1, 0, 1]
    assert torch.isfinite(guided).all()


def test_sdxl_conditioning_is_split_with_the_batch(harness: Any, sdxl: tuple) -> None:
    """SDXL's pooled/size vector ``y`` travels with each row of the split call: with step size 0 the prediction is
    the stock one, and the conditional chunk's loss is faithful mode's."""
    model, clip, _ = sdxl
    setup = prompt_case(harness, model, clip)
    guided, report = _sample(harness, setup, _config(harness, "fast"))
    unguided, _ = _sample(harness, setup, _config(harness, "fast", scale_factor=0.0))
    faithful = _sample(harness, setup, _config(harness, "faithful"))[1]
    assert_same_prediction(unguided, _stock(setup), model)
    assert report.steps[0].loss_before == pytest.approx(faithful.steps[0].loss_before, rel=1e-5)
    assert (guided - unguided).abs().max() > 1e-3


def test_each_mode_has_its_run_class_and_an_unknown_mode_is_named(harness: Any, setup: dict) -> None:
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    classes = {
        mode: sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), setup["bindings"],
                                                  _config(harness, mode)).run_class()
        for mode in ("faithful", "fast")
    }
    assert classes == {"faithful": harness.module("guidance.faithful_mode").FaithfulRun,
                       "fast": harness.module("guidance.fast_mode").FastRun}
    config = _config(harness, "fast")
    object.__setattr__(config, "mode", "quick")  # GuidanceConfig refuses it; a substituted run_classes may lack one
    odd = sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), setup["bindings"], config)
    with pytest.raises(sampler_module.BindingGuidanceError, match="guidance mode 'quick' is not one of faithful, fast"):
        odd.run_class()


@pytest.mark.parametrize("parsed_first", [False, True])
def test_several_positive_entries_guide_the_matching_entry_as_faithful_mode_does(
    harness: Any, setup: dict, sd15: tuple, parsed_first: bool
) -> None:
    """With the parsed prompt one of two positive entries (ConditioningCombine), the step's first conditional
    chunk may be the other entry: fast mode runs those steps the faithful way, on the entry that matches the
    bindings, and its report says so."""
    clip = sd15[1]
    with torch.inference_mode():
        parsed = harness.module("nodes.parse_node").parse_and_encode(clip, setup["bindings"].prompt)
        other = harness.node("CLIPTextEncode").encode(clip, "a red car and a white sheep")[0]
        entries = (parsed.conditioning, other) if parsed_first else (other, parsed.conditioning)
        combined = harness.node("ConditioningCombine").combine(*entries)[0]
    case = {**setup, "positive": combined, "bindings": parsed.bindings}

    def run(positive: list, mode: str) -> Any:
        config = dataclasses.replace(_config(harness, mode), measure_after_step=True)
        return _sample(harness, {**case, "positive": positive}, config)[1]

    fast, faithful, alone = run(combined, "fast"), run(combined, "faithful"), run(parsed.conditioning, "faithful")
    assert fast.steps[0].loss_before == pytest.approx(alone.steps[0].loss_before, rel=1e-5)  # the matching entry
    assert fast.losses == pytest.approx(faithful.losses, rel=1e-5)
    after = [record.loss_after_step for record in fast.steps]
    assert after == pytest.approx([record.loss_after_step for record in faithful.steps], rel=1e-5)
    assert after[0] < fast.steps[0].loss_before  # the update lowers the bindings' loss at the step it is taken
    assert "several positive entries" in fast.message
