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


def test_parse_bindings_addresses_t5_positions(flux: dict) -> None:
    """Flux's context is T5's output (256 tokens, no start token): pink=2 → sunflower=3, yellow=7 → flamingo=9-11
    ('▁' at 8 is sentencepiece's separate word-start piece). CLIP-L, which only gives the pooled vector, is not
    addressed."""
    layout = flux["bindings"].layout
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((3,), ((2,),)), ((9, 10, 11), ((7,),))]
    assert layout.prompt_positions == tuple(range(12)) and layout.context_length == 256
    assert flux["positive"][0][0].shape == (1, 256, 64)
    table = flux["bindings"].table
    assert table.encoders == ("t5xxl",) and [t.piece for t in table.tokens[7:12]] == ["▁yellow", "▁", "flam", "ing",
                                                                                      "o"]
    assert table.tokens[12].kind == "end" and {t.kind for t in table.tokens[13:]} == {"pad"}
    assert flux["bindings"].text_self_attention is None  # T-SAM's CLIP matrix would address CLIP positions


def test_t5_positions_of_a_prompt_longer_than_the_padding(harness: Any, flux: dict) -> None:
    """ComfyUI's T5 has no 77-token window: a prompt past 256 tokens makes a longer context, one column per token."""
    prompt = "a pink sunflower, " * 60 + "and a yellow flamingo"
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(flux["clip"], prompt)
    table = bindings.table
    tokens = flux["clip"].tokenize(prompt)["t5xxl"]
    assert len(tokens) == 1 and table.context_length == len(tokens[0]) > 256
    with torch.inference_mode():
        cond = harness.node("CLIPTextEncode").encode(flux["clip"], prompt)[0][0][0]
    assert cond.shape[1] == table.context_length
    last = bindings.layout.bindings[-1]
    pieces = "".join(table[p].piece for p in last.noun).replace("▁", "")
    assert pieces == "flamingo" and min(last.noun) > 256
    assert table[last.modifiers[0][0]].piece == "▁yellow"


def test_update_on_const_model_sampling_is_the_model_input_step(harness: Any, flux: dict) -> None:
    """Flux's CONST sampling feeds x itself to the model (c = 1), so x' = x − α∇ₓL (docs/model_families.md)."""
    import comfy.model_sampling

    sampling = flux["model"].model.model_sampling
    assert isinstance(sampling, comfy.model_sampling.CONST)
    sigma = torch.tensor([0.05, 0.5, 1.0])
    assert torch.equal(sampling.calculate_input(sigma, torch.ones(3)), torch.ones(3))
    run_class = harness.module("guidance.sampler").GuidanceRun
    holder = run_class.__new__(run_class)
    holder.model_sampling = sampling
    assert torch.equal(holder._update_scale(20.0, sigma, torch.ones(3), None), torch.full((3,), 20.0))


def _explicit_double_block_maps(block: Any, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                                pe: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Head-summed image→text softmax of one double-stream block, recomputed from its own weights: [B, T, h, w]."""
    from comfy.ldm.flux.math import apply_rope

    def q_k(mod: Any, norm: Any, attn: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        modulation, _ = mod(vec)
        hidden = (1 + modulation.scale) * norm(tokens) + modulation.shift
        qkv = attn.qkv(hidden).view(tokens.shape[0], tokens.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
        return attn.norm(qkv[0], qkv[1], qkv[2])

    txt_q, txt_k = q_k(block.txt_mod, block.txt_norm1, block.txt_attn, txt)
    img_q, img_k = q_k(block.img_mod, block.img_norm1, block.img_attn, img)
    q, k = apply_rope(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), pe)
    text = txt.shape[1]
    logits = q[:, :, text:].double() @ k[:, :, :text].double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = torch.exp(logits - logits.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    return probs.sum(dim=1).transpose(1, 2).reshape(img.shape[0], text, *grid)


def test_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, flux: dict) -> None:
    """Batch [uncond, cond] at a 26×38 latent (13×19 tokens): the recorder keeps the conditional row only, its maps
    are the head- and block-mean of softmax(q kᵀ/√d) over the text keys, pooled 2×2 (ceil) to 1/32 of the image
    side, and the block outputs are those of a plain forward."""
    capture = harness.module("attention_patch.capture")
    model = flux["model"].model
    blocks = model.diffusion_model.double_blocks
    plan = capture.capture_for_model(flux["model"], 4, lambda f: {f, 2})
    assert [b.label for b in plan.blocks] == ["double 0", "double 1"] and plan.factors == {2, 4}
    recorder = plan.recorder(stop_early=False)
    explicit: list[torch.Tensor] = []
    outputs: dict[str, list] = {"recorded": [], "plain": []}
    grid = (13, 19)

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        explicit.append(_explicit_double_block_maps(module, kwargs["img"], kwargs["txt"], kwargs["vec"], kwargs["pe"],
                                                    grid)[1:])

    context = torch.cat([flux["negative"][0][0], flux["positive"][0][0]])
    pooled = torch.cat([flux["negative"][0][1]["pooled_output"], flux["positive"][0][1]["pooled_output"]])
    latent = torch.randn(2, 16, 26, 38, generator=torch.Generator().manual_seed(3))
    for kind, options in (("recorded", recorder.model_options_with_patches({})), ("plain", {})):
        transformer_options = {**options.get("transformer_options", {}), "cond_or_uncond": [1, 0]}
        hooks = [blocks[1].register_forward_hook(lambda m, a, k, out, kind=kind: outputs[kind].append(out),
                                                 with_kwargs=True)]
        if kind == "recorded":
            hooks += [block.register_forward_pre_hook(before, with_kwargs=True) for block in blocks]
        try:
            with torch.no_grad():
                model.apply_model(latent, torch.tensor([0.6, 0.6]), c_crossattn=context, y=pooled,
                                  guidance=torch.tensor([3.5, 3.5]), transformer_options=transformer_options)
        finally:
            for hook in hooks:
                hook.remove()
    levels = recorder.levels()
    expected = (explicit[0] + explicit[1]) / (2 * model.diffusion_model.num_heads)
    assert levels[2].count == 4 and levels[2].mean.shape == (1, 256, 13, 19)
    assert torch.allclose(levels[2].mean.double(), expected, atol=1e-6)
    pooled_expected = torch.nn.functional.avg_pool2d(expected, 2, ceil_mode=True)
    assert levels[4].mean.shape == (1, 256, 7, 10)
    assert torch.allclose(levels[4].mean.double(), pooled_expected, atol=1e-6)
    assert torch.allclose(levels[4].mean.sum(dim=1), torch.ones(1, 7, 10), atol=1e-5)
    for recorded, plain in zip(outputs["recorded"][0], outputs["plain"][0], strict=True):
        assert torch.equal(recorded, plain)


def test_joint_normalization_keeps_the_share_of_attention_on_text(harness: Any, flux: dict) -> None:
    """'joint': the text columns of the softmax over text and image keys, so a map column sums to less than 1."""
    capture = harness.module("attention_patch.capture")
    model = flux["model"].model
    sums = {}
    for normalization in ("text", "joint"):
        recorder = capture.capture_for_model(flux["model"], 4, lambda f: {f}, joint_normalization=normalization)
        recorder = recorder.recorder(stop_early=True)
        options = recorder.model_options_with_patches({})
        with torch.no_grad(), pytest.raises(harness.module("attention_patch").RecordingComplete):
            model.apply_model(torch.randn(1, 16, 16, 16), torch.tensor([0.6]), c_crossattn=flux["positive"][0][0],
                              y=flux["positive"][0][1]["pooled_output"], guidance=torch.tensor([3.5]),
                              transformer_options=options["transformer_options"])
        sums[normalization] = recorder.levels()[4].mean.sum(dim=1)
    assert torch.allclose(sums["text"], torch.ones_like(sums["text"]), atol=1e-5)
    assert bool((sums["joint"] < 0.99).all()) and bool((sums["joint"] > 0).all())


METHODS = {"syngen": "", "syngen_entropy": "", "attend_and_excite": "refine = false",
           "divide_and_bind": "refine = false"}


@pytest.mark.parametrize(("method", "cfg"), [(m, 1.0) for m in METHODS] + [("syngen", 3.5)])
def test_each_method_lowers_its_loss_at_every_guided_step(harness: Any, flux: dict, method: str, cfg: float) -> None:
    """Faithful mode at CFG 1 (Flux-dev's usual setting: no unconditional pass) and with CFG."""
    out, report = guided(harness, flux, config(harness, method, advanced=METHODS[method]), cfg=cfg)
    stepped = [r for r in report.steps if r.stepped]
    assert stepped and torch.isfinite(out).all()
    for record in stepped:
        assert record.loss_after_step < record.loss_before, (method, record)
    assert (out - stock(flux, cfg=cfg)).abs().max() > 1e-4


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_fast_mode_update_lowers_the_loss_at_the_next_step(harness: Any, flux: dict, cfg: float) -> None:
    """Fast mode takes the gradient from the step's own call (the only call at CFG 1) and moves the latent one
    step later: the loss seen there is below the loss of the same run without updates."""
    out, report = guided(harness, flux, config(harness, mode="fast"), cfg=cfg)
    unguided = guided(harness, flux, config(harness, mode="fast", step_size=0.0), cfg=cfg)[1]
    assert report.steps[0].stepped
    assert report.steps[0].loss_before == pytest.approx(unguided.steps[0].loss_before, rel=1e-5)
    assert report.steps[1].loss_before < unguided.steps[1].loss_before
    assert (out - stock(flux, cfg=cfg)).abs().max() > 1e-4


def test_fast_mode_capture_leaves_the_prediction_unchanged(harness: Any, flux: dict) -> None:
    """Step size 0: the recorded blocks and the out-of-place residual adds give the stock result."""
    out, _ = guided(harness, flux, config(harness, mode="fast", step_size=0.0), cfg=3.5)
    assert torch.allclose(out, stock(flux, cfg=3.5), rtol=1e-4, atol=1e-4)


def test_batch_of_two_then_a_plain_run_is_bit_identical(harness: Any, flux: dict) -> None:
    """Both images of a batch of two are guided; the stock run computed before and after a guided one agrees bit
    for bit, and the model's options are untouched."""
    latent = torch.zeros(2, 16, 32, 32)
    model = flux["model"]
    before = stock(flux, cfg=3.5, latent=latent)
    options_before = repr(model.model_options)
    out, report = guided(harness, flux, config(harness, "syngen"), cfg=3.5, latent=latent)
    assert report.last_maps.shape == (2, 256, 8, 8)
    assert all(r.stepped and r.loss_after_step < r.loss_before for r in report.steps)
    for index in range(2):
        assert (out[index] - before[index]).abs().max() > 1e-4
    assert repr(model.model_options) == options_before
    assert torch.equal(stock(flux, cfg=3.5, latent=latent), before)


def test_chosen_blocks_and_stop_after_the_last_one(harness: Any, flux: dict) -> None:
    """'dit_blocks = single 1' records that block only; a missing block is named before sampling; T-SAM is refused
    for T5 positions."""
    seen: list[int] = []
    final = flux["model"].model.diffusion_model.final_layer
    handle = final.register_forward_hook(lambda *_: seen.append(1))
    try:
        _, report = guided(harness, flux, config(harness, advanced="dit_blocks = single 1"), steps=2)
    finally:
        handle.remove()
    assert report.steps[0].stepped
    assert len(seen) == 2  # the two sampling calls; the guidance passes stopped before the final layer
    errors = harness.module("attention_patch").UnsupportedModelError
    with pytest.raises(errors, match=r"no block double 5 .*double 0-1 and single 0-1"):
        guided(harness, flux, config(harness, advanced="dit_blocks = double 5"), steps=2)
    with pytest.raises(harness.module("guidance.errors").BindingGuidanceError, match="T-SAM"):
        guided(harness, flux, config(harness, "tsam"), steps=2)
    with pytest.raises(ValueError, match=r"dit_blocks: 'triple 3' is not 'double N'.*\(default ''\)"):
        config(harness, advanced="dit_blocks = triple 3")
    options = harness.module("nodes.config_node").BindingGuidanceOptions().configure(
        main_factor="4", stop_below=0.0, guidance_attention="sdpa", cpu_convolution="default",
        measure_after_step=False, joint_normalization="joint", dit_blocks="double 1, single 0-1")
    assert (options[0].joint_normalization, options[0].dit_blocks) == ("joint", "double 1, single 0-1")


@pytest.mark.parametrize("method", ["attend_and_excite", "divide_and_bind"])
def test_token_softmax_keeps_a_noun_at_t5_position_zero(method: str) -> None:
    """T5 has no start token: a noun can be column 0 ("cats and dogs"), and A&E's / D&B's token softmax runs over
    the prompt tokens of the one T5 sequence, not over CLIP's per-77 columns 1..75."""
    import importlib

    objectives = importlib.import_module("binding_guidance.binding_losses.objectives")
    types = importlib.import_module("binding_guidance.binding_losses.types")
    maps = torch.rand(1, 256, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = maps / maps.sum(dim=1, keepdim=True)
    layout = types.TokenLayout(bindings=(types.TokenBinding((0,), ((3,),)), types.TokenBinding((2,))),
                               prompt_positions=(0, 1, 2, 3), context_length=256, clip_chunks=False)
    objective = objectives.make_objective(method)
    assert objective.softmax_columns(layout, 256) == [(0, 4)] and objective.softmax_chunk(layout, 256) == 256
    result = objective.loss({4: types.AttentionLevel(maps, 1)}, layout, 0, 50)
    maxima = result.terms["maxima"]
    assert bool((maxima > 0.2).all()), maxima  # four tokens share the softmax: every subject has real mass
