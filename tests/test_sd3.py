"""SD3 (MMDiT, joint attention) on a tiny model built with ComfyUI's classes, with the real CLIP and T5 tokenizers.

What is asserted: Parse Bindings addresses the T5 segment of SD3's [CLIP-L‖G, T5] context; the recorded maps equal
an explicit softmax of each joint block's own q and k, recomputed from its weights; every method lowers its loss
at the guided steps, in faithful and fast mode, with and without CFG; a plain run after a guided one is
bit-identical; the latent step is the step on the model input (CONST).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from guided_runs import PROMPT

STEPS = 4


@pytest.fixture(scope="module")
def sd3(harness: Any) -> dict:
    """The tiny SD3 model and CLIP, the encoded prompt and the Parse Bindings output (built once per module)."""
    from tiny_dit_models import tiny_sd3_clip, tiny_sd3_model

    model = tiny_sd3_model()
    clip = tiny_sd3_clip()
    with torch.inference_mode():
        positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
        negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(clip, PROMPT)
    return {"model": model, "clip": clip, "positive": positive, "negative": negative, "bindings": bindings}


def config(harness: Any, method: str = "syngen", mode: str = "faithful", advanced: str = "",
           step_size: float = 20.0) -> Any:
    build = harness.module("nodes.config_node").build_config
    return build(method, step_size, 0.5, advanced + "\nmeasure_after_step = true\ncpu_convolution = default",
                 guidance_mode=mode)


def guided(harness: Any, case: dict, guidance: Any, cfg: float = 1.0, latent: torch.Tensor | None = None,
           steps: int = STEPS) -> tuple[torch.Tensor, Any]:
    import comfy.sample
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    model = case["model"]
    latent = torch.zeros(1, 16, 32, 32) if latent is None else latent
    with torch.inference_mode():
        sigmas = comfy.samplers.KSampler(model, steps, model.load_device, "euler", "simple", 1.0,
                                         model_options=model.model_options).sigmas
        sampler = sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), case["bindings"],
                                                      guidance)
        noise = comfy.sample.prepare_noise(latent, 7)
        out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, case["positive"], case["negative"],
                                         latent, disable_pbar=True, seed=7)
    return out, sampler.last_report


def stock(case: dict, cfg: float = 1.0, latent: torch.Tensor | None = None, steps: int = STEPS) -> torch.Tensor:
    import comfy.sample

    latent = torch.zeros(1, 16, 32, 32) if latent is None else latent
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(case["model"], noise, steps, cfg, "euler", "simple", case["positive"],
                                   case["negative"], latent, disable_pbar=True, seed=7)


def test_positions_address_the_t5_segment_after_the_clip_chunk(sd3: dict) -> None:
    """SD3's context: 77 CLIP-L‖G columns, then T5 (padded to 77). pink=79 → sunflower=80, yellow=84 →
    flamingo=86-88: T5 positions 2, 3, 7, 9-11 shifted by the CLIP chunk."""
    layout = sd3["bindings"].layout
    assert sd3["positive"][0][0].shape == (1, 154, 4096)
    assert layout.context_length == 154 and not layout.clip_chunks
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((80,), ((79,),)), ((86, 87, 88), ((84,),))]
    assert layout.prompt_positions == tuple(range(77, 89))
    table = sd3["bindings"].table
    assert table.encoders == ("l", "g", "t5xxl") and all(t.kind == "pad" for t in table.tokens[:77])
    assert table[84].piece == "▁yellow" and table[89].kind == "end"


def _explicit_joint_block_maps(block: Any, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor,
                               grid: tuple[int, int]) -> torch.Tensor:
    """Head-summed image→text softmax of one joint block, recomputed from its own weights: [B, T, h, w]."""
    context_qkv, _ = block.context_block.pre_attention(context, c)
    x_qkv, _ = block.x_block.pre_attention(x, c)
    heads = block.x_block.attn.num_heads
    q = torch.cat((context_qkv[0], x_qkv[0]), dim=1)
    k = torch.cat((context_qkv[1], x_qkv[1]), dim=1)
    batch, length, width = q.shape
    q = q.reshape(batch, length, heads, width // heads).transpose(1, 2).double()
    k = k.reshape(batch, length, heads, width // heads).transpose(1, 2).double()
    text = context.shape[1]
    logits = q[:, :, text:] @ k[:, :, :text].transpose(-1, -2) / math.sqrt(width // heads)
    probs = torch.softmax(logits, dim=-1)
    return probs.sum(dim=1).transpose(1, 2).reshape(batch, text, *grid)


def test_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, sd3: dict) -> None:
    """Batch [uncond, cond] at a 26×38 latent: the conditional row's maps are the head- and block-mean softmax over
    the text keys of every joint block, pooled 2×2; block outputs are those of a plain forward."""
    capture = harness.module("attention_patch.capture")
    model = sd3["model"].model
    blocks = model.diffusion_model.joint_blocks
    plan = capture.capture_for_model(sd3["model"], 4, lambda f: {f, 2})
    assert [b.label for b in plan.blocks] == ["joint 0", "joint 1"]
    recorder = plan.recorder(stop_early=False)
    explicit: list[torch.Tensor] = []
    outputs: dict[str, list] = {"recorded": [], "plain": []}
    grid = (13, 19)

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        explicit.append(_explicit_joint_block_maps(module, args[0], args[1], kwargs["c"], grid)[1:])

    context = torch.cat([sd3["negative"][0][0], sd3["positive"][0][0]])
    pooled = torch.cat([sd3["negative"][0][1]["pooled_output"], sd3["positive"][0][1]["pooled_output"]])
    latent = torch.randn(2, 16, 26, 38, generator=torch.Generator().manual_seed(3))
    for kind, options in (("recorded", recorder.model_options_with_patches({})), ("plain", {})):
        transformer_options = {**options.get("transformer_options", {}), "cond_or_uncond": [1, 0]}
        hooks = [blocks[0].register_forward_hook(lambda m, a, k, out, kind=kind: outputs[kind].append(out),
                                                 with_kwargs=True)]
        if kind == "recorded":
            hooks += [block.register_forward_pre_hook(before, with_kwargs=True) for block in blocks]
        try:
            with torch.no_grad():
                model.apply_model(latent, torch.tensor([0.6, 0.6]), c_crossattn=context, y=pooled,
                                  transformer_options=transformer_options)
        finally:
            for hook in hooks:
                hook.remove()
    levels = recorder.levels()
    expected = (explicit[0] + explicit[1]) / (2 * model.diffusion_model.num_heads)
    assert levels[2].count == 4 and levels[2].mean.shape == (1, 154, 13, 19)
    assert torch.allclose(levels[2].mean.double(), expected, atol=1e-6)
    assert torch.allclose(levels[4].mean.double(), torch.nn.functional.avg_pool2d(expected, 2, ceil_mode=True),
                          atol=1e-6)
    for recorded, plain in zip(outputs["recorded"][0], outputs["plain"][0], strict=True):
        assert torch.equal(recorded, plain)


METHODS = {"syngen": "", "syngen_entropy": "", "attend_and_excite": "refine = false",
           "divide_and_bind": "refine = false"}


@pytest.mark.parametrize(("method", "cfg"), [(m, 1.0) for m in METHODS] + [("syngen", 4.5)])
def test_each_method_lowers_its_loss_at_every_guided_step(harness: Any, sd3: dict, method: str, cfg: float) -> None:
    out, report = guided(harness, sd3, config(harness, method, advanced=METHODS[method]), cfg=cfg)
    stepped = [r for r in report.steps if r.stepped]
    assert stepped and torch.isfinite(out).all()
    for record in stepped:
        assert record.loss_after_step < record.loss_before, (method, record)
    assert (out - stock(sd3, cfg=cfg)).abs().max() > 1e-4


def test_fast_mode_update_lowers_the_loss_at_the_next_step(harness: Any, sd3: dict) -> None:
    out, report = guided(harness, sd3, config(harness, mode="fast"), cfg=4.5)
    unguided_out, unguided = guided(harness, sd3, config(harness, mode="fast", step_size=0.0), cfg=4.5)
    assert report.steps[0].stepped
    assert report.steps[1].loss_before < unguided.steps[1].loss_before
    plain = stock(sd3, cfg=4.5)
    assert torch.allclose(unguided_out, plain, rtol=1e-4, atol=1e-4)  # the capture leaves the prediction alone
    assert (out - plain).abs().max() > 1e-4


def test_batch_of_two_then_a_plain_run_is_bit_identical(harness: Any, sd3: dict) -> None:
    latent = torch.zeros(2, 16, 32, 32)
    model = sd3["model"]
    before = stock(sd3, cfg=4.5, latent=latent)
    options_before = repr(model.model_options)
    out, report = guided(harness, sd3, config(harness), cfg=4.5, latent=latent)
    assert report.last_maps.shape == (2, 154, 8, 8)
    assert all(r.stepped and r.loss_after_step < r.loss_before for r in report.steps)
    for index in range(2):
        assert (out[index] - before[index]).abs().max() > 1e-4
    assert repr(model.model_options) == options_before
    assert torch.equal(stock(sd3, cfg=4.5, latent=latent), before)


def test_const_update_scale_and_chosen_blocks(harness: Any, sd3: dict) -> None:
    """SD3's CONST sampling: the latent step is α·∇ₓL; 'dit_blocks = joint 0' records the first block only."""
    import comfy.model_sampling

    sampling = sd3["model"].model.model_sampling
    assert isinstance(sampling, comfy.model_sampling.CONST)
    run_class = harness.module("guidance.sampler").GuidanceRun
    holder = run_class.__new__(run_class)
    holder.model_sampling = sampling
    sigma = torch.tensor([0.1, 0.9])
    assert torch.equal(holder._update_scale(20.0, sigma, torch.ones(2), None), torch.full((2,), 20.0))
    capture = harness.module("attention_patch.capture")
    plan = capture.capture_for_model(sd3["model"], 4, lambda f: {f}, dit_blocks="joint 0")
    assert [b.label for b in plan.blocks] == ["joint 0"]
    _, report = guided(harness, sd3, config(harness, advanced="dit_blocks = joint 0"), steps=2)
    assert report.steps[0].stepped and report.steps[0].loss_after_step < report.steps[0].loss_before
