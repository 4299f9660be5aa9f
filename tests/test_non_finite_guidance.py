"""An update that would make the latent non-finite is never applied, and guidance that did nothing says so.

The objectives refuse these step sizes, so the tests force them onto a built objective: a step size of inf or 1e38
makes α/c²·∇ₓL non-finite, which is the forced failure. Real ComfyUI, the tiny SD1.5 checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch
from devkit.guided_runs import prompt_case, sample_guided, sample_stock


@pytest.fixture(scope="module")
def case(harness: Any, sd15: tuple) -> dict:
    model, clip, _ = sd15
    return prompt_case(harness, model, clip)


def _config(harness: Any, method: str = "syngen", mode: str = "faithful", scale_factor: float = 20.0,
            **params: Any) -> Any:
    """A config whose objective has ``scale_factor``; an out-of-range one (inf, 1e38) is forced past the declared
    range that every objective checks, as if validation had a hole."""
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    objective = objectives.make_objective(method, **params)
    object.__setattr__(objective, "scale_factor", scale_factor)
    return inputs.GuidanceConfig(objective=objective, mode=mode)


def _warning_pixels(image: torch.Tensor) -> int:
    """How many pixels of an IMAGE batch show the previews' warning colour (230, 80, 60), anti-aliased text
    included: red well above green, green above blue. Heat-map pixels (blue 0 or green 255), the red loss line
    (green = blue) and grey or black text never match."""
    r, g, b = ((image.numpy() * 255).round().astype(int)[..., channel] for channel in range(3))
    return int(((r > g + 40) & (g - b >= 8) & (b >= 20)).sum())


@pytest.mark.parametrize("scale_factor", [float("inf"), 1e38])
def test_faithful_update_that_would_make_the_latent_non_finite_is_not_applied(
    harness: Any, case: dict, scale_factor: float
) -> None:
    run = harness.module("guidance.run")
    out, report = sample_guided(harness, case, _config(harness, scale_factor=scale_factor))
    assert torch.isfinite(out).all()
    assert torch.equal(out, sample_stock(case))  # every update was refused: the unguided sampling, bit for bit
    assert [r.step for r in report.steps] == [0, 1]
    assert all(r.stepped is False and r.skipped == run.NON_FINITE_LATENT for r in report.steps)
    assert not report.applied
    summary = report.to_dict()
    assert summary["guidance_applied"] is False
    assert summary["message"].startswith("Guidance did nothing")
    assert run.NON_FINITE_LATENT in summary["message"]
    assert [s["skipped"] for s in summary["steps"]] == [run.NON_FINITE_LATENT] * 2


def test_fast_mode_update_that_would_make_the_latent_non_finite_is_not_applied(harness: Any, case: dict) -> None:
    run, fast_mode = harness.module("guidance.run"), harness.module("guidance.fast_mode")
    out, report = sample_guided(harness, case, _config(harness, mode="fast", scale_factor=float("inf")))
    unguided, _ = sample_guided(harness, case, _config(harness, mode="fast", scale_factor=0.0))
    assert torch.isfinite(out).all()
    assert torch.equal(out, unguided)  # the same split model calls, and no update applied
    assert [(r.step, r.stepped, r.skipped) for r in report.steps] == [
        (0, False, run.NON_FINITE_LATENT),
        (1, False, run.NON_FINITE_LATENT),
    ]
    assert fast_mode.LAST_STEP not in report.message and report.message.startswith("Guidance did nothing")


def test_fast_mode_late_update_is_checked_against_the_latent_it_lands_on(harness: Any, case: dict) -> None:
    """An update queued by step i that turns the latent non-finite at step i+1 is dropped there, and step i's
    record says so."""
    sampler_module, run = harness.module("guidance.sampler"), harness.module("guidance.run")
    fast_run = sampler_module.BindingGuidedSampler.run_classes["fast"]

    class PoisonedUpdate(fast_run):
        def _update_from(self, captured: Any, pending: Any, step: int, step_size: float) -> str | None:
            skipped = super()._update_from(captured, pending, step, step_size)
            if skipped is None:  # a finite update in the queue, replaced by one the latent cannot take
                self._pending_update = (step, torch.full_like(captured.grad, float("nan")))
            return skipped

    class PoisonedSampler(sampler_module.BindingGuidedSampler):
        run_classes: ClassVar[dict] = {"fast": PoisonedUpdate}

    config = _config(harness, mode="fast", scale_factor=0.0)
    out, report = sample_guided(harness, case, config, sampler_class=PoisonedSampler)
    unguided, _ = sample_guided(harness, case, config)
    assert torch.isfinite(out).all()
    assert torch.equal(out, unguided)
    assert [(r.step, r.stepped, r.skipped) for r in report.steps] == [
        (0, False, run.NON_FINITE_LATENT),
        (1, False, run.NON_FINITE_LATENT),
    ]


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_refinement_iteration_that_would_make_the_latent_non_finite_is_not_applied(
    harness: Any, case: dict, mode: str
) -> None:
    """Attend-and-Excite refines at steps 0 and 1 of 4: its iteration and its update are both refused."""
    run = harness.module("guidance.run")
    config = _config(harness, "attend_and_excite", mode, scale_factor=float("inf"), max_refinement_steps=2)
    out, report = sample_guided(harness, case, config)
    assert torch.isfinite(out).all()
    if mode == "faithful":
        assert torch.equal(out, sample_stock(case))
    assert [r.step for r in report.steps] == [0, 1]
    for record in report.steps:
        assert record.refinement_iterations == 0  # the first candidate was refused, which ended refinement
        assert record.refinement_stopped == run.NON_FINITE_REFINEMENT
        assert record.skipped == run.NON_FINITE_LATENT and not record.stepped
        assert record.loss_after_refinement == record.loss_before  # the refused iteration changed nothing
        assert not record.moved_latent
    assert report.message.startswith("Guidance did nothing")


def test_the_node_and_its_previews_say_when_guidance_did_nothing(harness: Any, case: dict) -> None:
    """Through the Binding-Guided KSampler node: a prompt without bindings, and a run whose every update was
    refused, both say in the report and on both preview images that guidance did nothing; a normal run does not."""
    types, inputs = harness.module("binding_losses.types"), harness.module("guidance.inputs")
    node = harness.node("BindingGuidedKSampler")
    empty = inputs.PromptBindings(prompt=case["bindings"].prompt, layout=types.TokenLayout((), tuple(range(1, 8))))

    def run_node(bindings: Any, config: Any) -> tuple[dict, torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            output = node.sample(case["model"], 7, 3, 5.0, "euler", "karras", case["positive"], case["negative"],
                                 {"samples": torch.zeros(1, 4, 16, 16)}, 1.0, bindings, config)
        _, panels, curve = output["result"]
        return output["ui"]["binding_report"][0], panels, curve

    for bindings, scale in ((empty, 20.0), (case["bindings"], float("inf"))):
        summary, panels, curve = run_node(bindings, _config(harness, scale_factor=scale))
        assert summary["guidance_applied"] is False
        assert summary["message"].startswith("Guidance did nothing")
        assert _warning_pixels(panels) > 20 and _warning_pixels(curve) > 20
    summary, panels, curve = run_node(case["bindings"], _config(harness, scale_factor=20.0))
    assert summary["guidance_applied"] is True and summary["message"].startswith("Guidance moved the latent")
    assert _warning_pixels(panels) == 0 and _warning_pixels(curve) == 0


def test_previews_draw_non_finite_values_without_casting_them(harness: Any) -> None:
    types, previews, report_module = (
        harness.module("binding_losses.types"),
        harness.module("guidance.previews"),
        harness.module("guidance.report"),
    )
    layout = types.TokenLayout((types.TokenBinding((3,), ((2,),)),), (1, 2, 3))
    maps = torch.full((77, 4, 4), float("nan"))
    maps[3, 0, 0] = float("inf")
    report = report_module.GuidanceReport(main_factor=4, num_steps=4)
    for step, loss in enumerate([float("nan"), 0.5, float("inf")]):
        record = report_module.StepRecord(step, 1.0, loss, loss, 0, step == 1, 1.0, skipped=None if step == 1 else "x")
        report.add(record, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "invalid value encountered in cast" would raise here
        panels = previews.attention_panels(maps, layout, {}, image=torch.full((1, 8, 8, 3), float("nan")))
        curve = previews.loss_curve(report)
    assert torch.isfinite(panels).all() and torch.isfinite(curve).all()
    assert report.to_dict()["steps"][0]["loss_before_update"] == "nan"  # JSON can carry it
    assert report.applied and _warning_pixels(curve) > 0  # the two non-finite losses are drawn as ×
