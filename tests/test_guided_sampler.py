"""The guided sampler on a real (tiny) ComfyUI checkpoint: every sampler, no leaks, loss goes down."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.guided_runs import assert_lowered, prompt_case, sample_guided, sample_stock


@pytest.fixture(scope="module")
def setup(harness: Any, sd15: tuple) -> dict:
    model, clip, _ = sd15
    types = harness.module("binding_losses.types")
    objectives = harness.module("binding_losses.objectives")
    inputs = harness.module("guidance.inputs")
    case = prompt_case(harness, model, clip)
    no_bindings = types.TokenLayout((), tuple(range(1, 8)))
    return {
        **case,
        "empty": inputs.PromptBindings(prompt=case["bindings"].prompt, layout=no_bindings),
        "config": inputs.GuidanceConfig(objective=objectives.make_objective("syngen"), measure_after_step=True),
        "latent": torch.zeros(1, 4, 16, 16),
    }


def _sample(
    harness: Any,
    setup: dict,
    sampler_name: str,
    bindings: Any,
    scheduler: str = "karras",
    latent: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    latent = setup["latent"] if latent is None else latent
    return sample_guided(
        harness,
        setup,
        setup["config"],
        bindings=bindings,
        sampler_name=sampler_name,
        scheduler=scheduler,
        latent=latent,
        noise_mask=noise_mask,
    )


def _stock(setup: dict, sampler_name: str, scheduler: str = "karras") -> torch.Tensor:
    return sample_stock(setup, sampler_name=sampler_name, scheduler=scheduler, latent=setup["latent"])


def _supported_samplers(harness: Any) -> list[str]:
    import comfy.samplers

    unsupported = harness.module("guidance.step_plan").UNSUPPORTED_SAMPLERS
    return [name for name in comfy.samplers.KSampler.SAMPLERS if name not in unsupported]


def test_every_supported_sampler_is_guided_at_the_right_call(harness: Any, setup: dict) -> None:
    """Each sampler runs, the planned call is at sigma_i (checked inside), and the result moves."""
    samplers = _supported_samplers(harness)
    assert len(samplers) >= 30
    small = dict(setup, latent=torch.zeros(1, 4, 8, 8))  # 2×2 maps: enough to prove the update lands, 4× cheaper
    for name in samplers:
        guided, report = _sample(harness, small, name, setup["bindings"])
        assert torch.isfinite(guided).all(), name
        guided_steps = [record.step for record in report.steps]
        assert guided_steps == [0, 1], f"{name}: guided steps {guided_steps}"  # first half of 4 steps
        assert all(record.stepped for record in report.steps), name
        stock = _stock(small, name)
        assert (guided - stock).abs().max() > 1e-3, f"{name}: guidance did not change the result"


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2", "dpm_fast", "dpm_adaptive"])
def test_samplers_that_cannot_carry_the_update_are_refused(harness: Any, setup: dict, name: str) -> None:
    import comfy.samplers

    guided_sampler = harness.module("guidance.sampler")
    with pytest.raises(guided_sampler.BindingGuidanceError, match=name):
        guided_sampler.BindingGuidedSampler(comfy.samplers.sampler_object(name), setup["bindings"], setup["config"])


@pytest.mark.parametrize(
    "name,scheduler",
    [
        ("euler", "normal"),
        ("dpmpp_2m", "karras"),
        ("heun", "simple"),
        ("euler_ancestral", "exponential"),
        ("lcm", "sgm_uniform"),
    ],
)
def test_empty_bindings_match_stock_ksampler_exactly(harness: Any, setup: dict, name: str, scheduler: str) -> None:
    guided, report = _sample(harness, setup, name, setup["empty"], scheduler=scheduler)
    assert report.steps == []
    assert torch.equal(guided, _stock(setup, name, scheduler))


def test_gradient_step_lowers_the_binding_loss(harness: Any, setup: dict) -> None:
    _, report = _sample(harness, setup, "euler", setup["bindings"])
    assert [record.step for record in report.steps] == [0, 1]
    for record in report.steps:
        assert_lowered(record)


def test_no_patch_leaks_into_the_next_run(harness: Any, setup: dict) -> None:
    """The stock result is taken before the guided run: a leaked patch or hook would change every later run."""
    model = setup["model"]
    stock_before = _stock(setup, "euler")
    options_before = repr(model.model_options)
    _sample(harness, setup, "euler", setup["bindings"])
    assert repr(model.model_options) == options_before
    assert torch.equal(_stock(setup, "euler"), stock_before)
    assert torch.equal(_sample(harness, setup, "euler", setup["empty"])[0], stock_before)


def test_masked_latent_moves_only_inside_the_mask(harness: Any, setup: dict) -> None:
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1.0
    guided, _ = _sample(harness, setup, "euler", setup["bindings"], latent=latent, noise_mask=mask)
    plain, _ = _sample(harness, setup, "euler", setup["empty"], latent=latent, noise_mask=mask)
    assert (guided[..., :8] - plain[..., :8]).abs().max() > 1e-3
    assert torch.allclose(guided[..., 8:], plain[..., 8:], atol=1e-5)


def test_batch_of_two_guides_each_image(harness: Any, setup: dict) -> None:
    latent = torch.zeros(2, 4, 16, 24)  # non-square too
    guided, report = _sample(harness, setup, "euler", setup["bindings"], latent=latent)
    plain, _ = _sample(harness, setup, "euler", setup["empty"], latent=latent)
    assert guided.shape == (2, 4, 16, 24)
    for index in range(2):
        assert (guided[index] - plain[index]).abs().max() > 1e-3
    assert report.last_maps is not None and report.last_maps.shape[0] == 2


def test_cancel_during_guidance_leaves_the_model_clean(harness: Any, setup: dict) -> None:
    import comfy.model_management

    inputs = harness.module("guidance.inputs")

    class CancelInLoss:
        """Wraps the objective; its first loss call presses Cancel, as the UI would mid-run."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def loss(self, *args: Any, **kwargs: Any) -> Any:
            comfy.model_management.interrupt_current_processing(True)
            return self.inner.loss(*args, **kwargs)

    cancelling = dict(setup, config=inputs.GuidanceConfig(objective=CancelInLoss(setup["config"].objective)))
    stock_before = _stock(setup, "euler")  # before the cancelled run, so that anything it leaks shows
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _sample(harness, cancelling, "euler", setup["bindings"])
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert torch.equal(_stock(setup, "euler"), stock_before)
    assert torch.equal(_sample(harness, setup, "euler", setup["empty"])[0], stock_before)


def test_early_exit_stops_guiding_below_the_threshold(harness: Any, setup: dict) -> None:
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"), stop_below=1e9)
    _, report = _sample(harness, dict(setup, config=config), "euler", setup["bindings"])
    assert [r.stepped for r in report.steps] == [False]  # the first loss is below: no update, no more guided steps


def test_ending_the_guidance_forward_early_does_not_change_the_losses(harness: Any, setup: dict) -> None:
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    reports = []
    for stop_early in (True, False):
        config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"), stop_forward_early=stop_early,
                                       measure_after_step=True)
        reports.append(_sample(harness, dict(setup, config=config), "euler", setup["bindings"])[1])
    early, full = reports
    assert len(early.steps) == len(full.steps) == 2
    for a, b in zip(early.steps, full.steps, strict=True):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-5)
        assert a.loss_after_step == pytest.approx(b.loss_after_step, rel=1e-5)


def test_guidance_attention_kernel_does_not_change_the_losses(harness: Any, setup: dict) -> None:
    """SDPA in the guidance pass (the default) gives the losses ComfyUI's own kernel gives, within float error."""
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    reports = []
    for kernel in ("sdpa", "comfy"):
        config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"), guidance_attention=kernel,
                                       measure_after_step=True)
        reports.append(_sample(harness, dict(setup, config=config), "euler", setup["bindings"])[1])
    for a, b in zip(reports[0].steps, reports[1].steps, strict=True):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-4)
        assert a.loss_after_step == pytest.approx(b.loss_after_step, rel=1e-4)
