"""Guided sampling on the tiny Flux.1, SD3, Chroma, Z-Image and Qwen-Image models (joint-attention DiTs, CONST).

What is asserted: every method lowers its loss at every guided step in faithful mode, at CFG 1 (Flux-dev's setting:
no unconditional pass) and with the family's usual CFG; T-SAM (on the T5 or Qwen self-attention) also with its
refinement and in fast mode; fast mode's update lowers the loss at the next step and its capture leaves the prediction
unchanged; both images of a batch of two are guided, and a plain run after a guided one is bit-identical to one
computed before it; the latent step on a CONST model is α·∇ₓL.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.dit_runs import config, guided, stock, tiny_case

FAMILY_CFG = {"flux": 3.5, "sd3": 4.5, "chroma": 4.0, "z_image": 4.0, "qwen_image": 4.0}
METHODS = {"syngen": "", "syngen_entropy": "", "attend_and_excite": "refine = false",
           "divide_and_bind": "refine = false", "tsam": "refine = false"}


@pytest.fixture(scope="module", params=sorted(FAMILY_CFG))
def dit(request: pytest.FixtureRequest, harness: Any) -> dict:
    """One family's tiny model, CLIP, encoded prompt and bindings (built once per family)."""
    return {**tiny_case(harness, request.param), "arch": request.param, "cfg": FAMILY_CFG[request.param]}


@pytest.mark.parametrize(("method", "with_cfg"), [(m, False) for m in METHODS] + [("syngen", True), ("tsam", True)])
def test_each_method_lowers_its_loss_at_every_guided_step(harness: Any, dit: dict, method: str,
                                                          with_cfg: bool) -> None:
    cfg = dit["cfg"] if with_cfg else 1.0
    out, report = guided(harness, dit, config(harness, method, advanced=METHODS[method]), cfg=cfg)
    stepped = [r for r in report.steps if r.stepped]
    assert stepped and torch.isfinite(out).all()
    for record in stepped:
        assert record.loss_after_step < record.loss_before, (method, record)
    assert (out - stock(dit, cfg=cfg)).abs().max() > 1e-4


@pytest.mark.parametrize("with_cfg", [False, True])
def test_fast_mode_update_lowers_the_loss_at_the_next_step(harness: Any, dit: dict, with_cfg: bool) -> None:
    """The gradient comes from the step's own call (the only call at CFG 1) and moves the latent one step later:
    the loss seen there is below that of the same run without updates; with step size 0 the capture leaves the
    result as stock sampling's."""
    cfg = dit["cfg"] if with_cfg else 1.0
    out, report = guided(harness, dit, config(harness, mode="fast"), cfg=cfg)
    unguided_out, unguided = guided(harness, dit, config(harness, mode="fast", step_size=0.0), cfg=cfg)
    assert report.steps[0].stepped
    assert report.steps[0].loss_before == pytest.approx(unguided.steps[0].loss_before, rel=1e-5)
    assert report.steps[1].loss_before < unguided.steps[1].loss_before
    plain = stock(dit, cfg=cfg)
    assert torch.allclose(unguided_out, plain, rtol=1e-4, atol=1e-4)
    assert (out - plain).abs().max() > 1e-4


@pytest.mark.parametrize("with_cfg", [False, True])
def test_tsam_refines_and_guides_in_fast_mode(harness: Any, dit: dict, with_cfg: bool) -> None:
    """T-SAM's refinement (at the refinement points 0, 1 and 2 of 5 steps, capped at 2 updates here) lowers its
    loss before each of those steps' update; in fast mode, steps without refinement move the latent one step late,
    and the loss seen at step 3 (guided at 5 steps: i < 0.6·5) is below that of the same run without updates."""
    cfg = dit["cfg"] if with_cfg else 1.0
    _, report = guided(harness, dit, config(harness, "tsam", advanced="refinement_iterations = 2"), cfg=cfg, steps=5)
    assert [r.step for r in report.steps] == [0, 1, 2]
    for record in report.steps:
        assert record.refinement_iterations == 2 and record.loss_after_refinement < record.loss_before, record
        assert record.stepped and record.loss_after_step < record.loss_after_refinement, record
    fast = config(harness, "tsam", mode="fast", advanced="refine = false")
    out, report = guided(harness, dit, fast, cfg=cfg, steps=5)
    unguided_out, unguided = guided(harness, dit, config(harness, "tsam", mode="fast", advanced="refine = false",
                                                         step_size=0.0), cfg=cfg, steps=5)
    assert [r.stepped for r in report.steps] == [True, True, True] and torch.isfinite(out).all()
    assert report.steps[0].loss_before == pytest.approx(unguided.steps[0].loss_before, rel=1e-5)
    assert report.steps[1].loss_before < unguided.steps[1].loss_before
    assert (out - unguided_out).abs().max() > 1e-4


def test_tsam_without_a_text_encoder_is_refused_before_sampling(harness: Any, dit: dict) -> None:
    """Hand-built bindings that carry no CLIP have no text self-attention for T-SAM: refused by name."""
    import dataclasses

    case = {**dit, "bindings": dataclasses.replace(dit["bindings"], clip=None)}
    with pytest.raises(harness.module("guidance.errors").BindingGuidanceError, match=r"T-SAM.*no CLIP"):
        guided(harness, case, config(harness, "tsam"), steps=2)


def test_batch_of_two_then_a_plain_run_is_bit_identical(harness: Any, dit: dict) -> None:
    latent = torch.zeros(2, 16, 32, 32)
    model = dit["model"]
    before = stock(dit, cfg=dit["cfg"], latent=latent)
    options_before = repr(model.model_options)
    out, report = guided(harness, dit, config(harness), cfg=dit["cfg"], latent=latent)
    assert report.last_maps.shape[:2] == (2, dit["bindings"].layout.context_length)
    assert all(r.stepped and r.loss_after_step < r.loss_before for r in report.steps)
    for index in range(2):
        assert (out[index] - before[index]).abs().max() > 1e-4
    assert repr(model.model_options) == options_before
    assert torch.equal(stock(dit, cfg=dit["cfg"], latent=latent), before)


def test_update_on_const_model_sampling_is_the_model_input_step(harness: Any, dit: dict) -> None:
    """CONST sampling feeds x itself to the model (c = 1), so x' = x − α∇ₓL (docs/model_families.md)."""
    import comfy.model_sampling

    sampling = dit["model"].model.model_sampling
    assert isinstance(sampling, comfy.model_sampling.CONST)
    sigma = torch.tensor([0.05, 0.5, 1.0])
    assert torch.equal(sampling.calculate_input(sigma, torch.ones(3)), torch.ones(3))
    update_scale = harness.module("guidance.run").update_scale
    assert torch.equal(update_scale(sampling, 20.0, sigma, torch.ones(3), None), torch.full((3,), 20.0))
