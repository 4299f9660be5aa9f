"""Loss scaling keeps the latent gradient of an fp16 network from underflowing, and backs off when it overflows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
from binding_guidance.guidance.gradients import GradientOverflowError, LossScale, loss_and_gradient
from devkit.guided_runs import assert_same_prediction, prompt_case, sample_guided, syngen_config


def _fp16_chain(leaf: torch.Tensor, *factors: float) -> SimpleNamespace:
    """A loss whose backward runs in fp16: leaf → fp16 → multiplied by each factor → fp32 sum."""
    hidden = leaf.half()
    for factor in factors:
        hidden = hidden * factor
    return SimpleNamespace(total=hidden.float().sum())


def test_unscaled_fp16_gradient_underflows_and_the_scaled_one_is_exact() -> None:
    leaf = torch.ones(64, requires_grad=True)
    factors = (1e-3, 1e-3, 1e-2)  # dL/dleaf = 1e-8 per entry: below fp16's smallest subnormal (6e-8)
    _, plain = loss_and_gradient(_fp16_chain(leaf, *factors), leaf)
    assert torch.count_nonzero(plain) == 0
    scale = LossScale.for_dtype(torch.float16)
    _, scaled = loss_and_gradient(_fp16_chain(leaf, *factors), leaf, scale)
    assert scaled.dtype == torch.float32
    assert scaled == pytest.approx(torch.full((64,), 1e-8), rel=2e-2)
    assert scale.value == 4096.0


def test_overflowing_scale_backs_off_and_stays_lowered() -> None:
    leaf = torch.ones(8, requires_grad=True)
    scale = LossScale.for_dtype(torch.float16)
    with pytest.raises(GradientOverflowError) as overflow:  # 4096 · 30 overflows fp16 (max 65504)
        loss_and_gradient(_fp16_chain(leaf, 30.0), leaf, scale)
    assert overflow.value.loss == pytest.approx(240.0)
    assert scale.value == 256.0
    # The caller recomputes the loss (the graph was freed) and retries at the lowered scale.
    _, grad = loss_and_gradient(_fp16_chain(leaf, 30.0), leaf, scale)
    assert torch.equal(grad, torch.full((8,), 30.0))
    assert scale.value == 256.0


def test_no_scaling_outside_fp16() -> None:
    assert LossScale.for_dtype(torch.bfloat16).value == 1.0
    assert LossScale.for_dtype(torch.float32).value == 1.0


class _ForcedScale:
    """A sampler whose runs (of either guidance mode) start their loss scale where the scaled loss overflows fp32
    (1e40 > 3.4e38), so that the overflow handling runs on a CPU model (on the CPU, ComfyUI computes in fp32 and
    scales nothing)."""

    def __init__(self, harness: Any) -> None:
        sampler_module = harness.module("guidance.sampler")
        self.runs: list[Any] = []
        runs = self.runs

        def forced(run_class: type) -> type:
            class ForcedRun(run_class):
                def __init__(self, *args: Any) -> None:
                    super().__init__(*args)
                    self.loss_scale.value = 1e40
                    runs.append(self)

            return ForcedRun

        class ForcedSampler(sampler_module.BindingGuidedSampler):
            run_classes: ClassVar[dict] = {
                mode: forced(cls) for mode, cls in sampler_module.BindingGuidedSampler.run_classes.items()
            }

        self.sampler_class = ForcedSampler


@pytest.fixture(scope="module")
def case(harness: Any, sd15: tuple) -> dict:
    model, clip, _ = sd15
    return prompt_case(harness, model, clip)


def test_faithful_mode_repeats_the_guidance_pass_after_an_overflow(harness: Any, case: dict) -> None:
    forced = _ForcedScale(harness)
    config = syngen_config(harness, mode="faithful")
    reference, reference_report = sample_guided(harness, case, config)
    out, report = sample_guided(harness, case, config, sampler_class=forced.sampler_class)
    (run,) = forced.runs
    assert 1.0 <= run.loss_scale.value <= 1e40 / 16  # lowered until the scaled gradient was finite, then kept
    assert [r.stepped for r in report.steps] == [r.stepped for r in reference_report.steps]
    assert all(r.stepped for r in report.steps)
    assert_same_prediction(out, reference, case["model"])  # the same update, up to rounding


def test_fast_mode_skips_the_update_of_a_step_whose_gradient_overflowed(harness: Any, case: dict) -> None:
    forced = _ForcedScale(harness)
    out, report = sample_guided(harness, case, syngen_config(harness, mode="fast"), sampler_class=forced.sampler_class)
    (run,) = forced.runs
    assert report.steps[0].stepped is False
    assert run.loss_scale.value < 1e40
    assert torch.isfinite(out).all()
