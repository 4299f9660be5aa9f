"""Shared plumbing for the Flux.1 and SD3 tests: encode a prompt, build a config, sample guided and stock.

Latents default to 32×32 (256 px): an 8×8 map at factor 4, as a 512 px SD1.x image has 16×16.
"""

from __future__ import annotations

from typing import Any

import torch

from devkit.guided_runs import PROMPT

STEPS = 4


def encoded_case(harness: Any, model: Any, clip: Any) -> dict:
    """``model`` and ``clip`` with PROMPT encoded (positive), the empty negative, and Parse Bindings' output."""
    with torch.inference_mode():
        positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
        negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(clip, PROMPT)
    return {"model": model, "clip": clip, "positive": positive, "negative": negative, "bindings": bindings}


def tiny_case(harness: Any, arch: str) -> dict:
    """The tiny ``arch`` ("flux", "sd3", or a ``tiny_family_models.FAMILY_MODELS`` key) model and CLIP with PROMPT
    encoded and parsed (see encoded_case)."""
    from conftest import TEST_CACHE

    from devkit.tiny_dit_files import load_tiny_clip
    from devkit.tiny_dit_models import tiny_flux_model, tiny_sd3_model
    from devkit.tiny_family_models import FAMILY_MODELS

    if arch in FAMILY_MODELS:
        make_model, make_clip = FAMILY_MODELS[arch]
        return encoded_case(harness, make_model(), make_clip())
    model = tiny_flux_model() if arch == "flux" else tiny_sd3_model()
    return encoded_case(harness, model, load_tiny_clip(arch, TEST_CACHE))


def config(harness: Any, method: str = "syngen", mode: str = "faithful", advanced: str = "",
           step_size: float = 20.0) -> Any:
    """The Binding Loss Config node's config for ``method`` (measures the loss after each faithful update)."""
    build = harness.module("nodes.config_node").build_config
    return build(method, step_size, 0.5, advanced + "\nmeasure_after_step = true\ncpu_convolution = default",
                 guidance_mode=mode)


def guided(harness: Any, case: dict, guidance: Any, cfg: float = 1.0, latent: torch.Tensor | None = None,
           steps: int = STEPS) -> tuple[torch.Tensor, Any]:
    """Euler/simple sampling with the Binding-Guided Sampler (seed 7); returns (latent, report)."""
    import comfy.sample
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    model = case["model"]
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(1, 16, 32, 32) if latent is None else latent)
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
    """The same sampling through ComfyUI's stock KSampler path."""
    import comfy.sample

    latent = torch.zeros(1, 16, 32, 32) if latent is None else latent
    latent = comfy.sample.fix_empty_latent_channels(case["model"], latent)  # as KSampler: Qwen-Image's is 5-D
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(case["model"], noise, steps, cfg, "euler", "simple", case["positive"],
                                   case["negative"], latent, disable_pbar=True, seed=7)


def record_beside_explicit(harness: Any, case: dict, blocks: Any, explicit: Any, extra: dict) -> dict:
    """One forward of the batch [uncond, cond] at a 26×38 latent (13×19 tokens) with a recorder of every block
    (``capture_for_model`` with levels 2 and 4), and ``explicit(block, args, kwargs)`` run on each block's inputs
    (its conditional row); then the same forward without the recorder. Returns the recorded levels, the mean of
    the explicit maps, and the first block's outputs with and without the recorder."""
    import comfy.sample

    capture = harness.module("attention_patch.capture")
    model = case["model"].model
    plan = capture.capture_for_model(case["model"], 4, lambda f: {f, 2})
    recorder = plan.recorder(stop_early=False)
    maps: list[torch.Tensor] = []
    outputs: dict[str, Any] = {}

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        maps.append(explicit(module, args, kwargs)[1:])

    negative, positive = case["negative"][0][0], case["positive"][0][0]
    if negative.shape != positive.shape:  # an unpadded encoder (Chroma's T5, Qwen3): any other row of that length
        negative = positive.flip(1)
    context = torch.cat([negative, positive])
    pooled = [entry[0][1].get("pooled_output") for entry in (case["negative"], case["positive"])]
    extra = {**extra, "y": torch.cat(pooled)} if pooled[0] is not None else extra  # Chroma, Z-Image: no pooled
    latent = torch.randn(2, 16, 26, 38, generator=torch.Generator().manual_seed(3))
    latent = comfy.sample.fix_empty_latent_channels(case["model"], latent)  # Qwen-Image: 5-D
    for kind, options in (("recorded", recorder.model_options_with_patches({})), ("plain", {})):
        transformer_options = {**options.get("transformer_options", {}), "cond_or_uncond": [1, 0]}
        hooks = [blocks[0].register_forward_hook(lambda m, a, k, out, kind=kind: outputs.setdefault(kind, out),
                                                 with_kwargs=True)]
        if kind == "recorded":
            hooks += [block.register_forward_pre_hook(before, with_kwargs=True) for block in blocks]
        try:
            with torch.no_grad():
                model.apply_model(latent, torch.tensor([0.6, 0.6]), c_crossattn=context,
                                  transformer_options=transformer_options, **extra)
        finally:
            for hook in hooks:
                hook.remove()
    heads = plan.blocks[0].heads
    return {"plan": plan, "levels": recorder.levels(), "expected": sum(maps) / (len(maps) * heads),
            "outputs": outputs}


def explicit_softmax(q: torch.Tensor, k: torch.Tensor, text: int, grid: tuple[int, int]) -> torch.Tensor:
    """Head-summed softmax of the image queries over the text keys, in fp64: ``[B, text, *grid]`` from q and k
    ``[B, heads, text + image, d]`` with the text first."""
    logits = q[:, :, text:].double() @ k[:, :, :text].double().transpose(-1, -2) / q.shape[-1] ** 0.5
    probs = torch.softmax(logits, dim=-1)
    return probs.sum(dim=1).transpose(1, 2).reshape(q.shape[0], text, *grid)


def flux_double_block_maps(block: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """One Flux-style double-stream block's image→text softmax at a 13×19 token grid, recomputed from its own
    weights and inputs. Flux's blocks compute their modulations from ``vec``; Chroma's receive them in ``vec``."""
    from comfy.ldm.flux.math import apply_rope

    vec, img, txt = kwargs["vec"], kwargs["img"], kwargs["txt"]
    img_mod, txt_mod = (block.img_mod(vec), block.txt_mod(vec)) if block.modulation else vec

    def q_k(modulation: Any, norm: Any, attn: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = (1 + modulation[0].scale) * norm(tokens) + modulation[0].shift
        qkv = attn.qkv(hidden).view(tokens.shape[0], tokens.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
        return attn.norm(qkv[0], qkv[1], qkv[2])

    txt_q, txt_k = q_k(txt_mod, block.txt_norm1, block.txt_attn, txt)
    img_q, img_k = q_k(img_mod, block.img_norm1, block.img_attn, img)
    q, k = apply_rope(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), kwargs["pe"])
    return explicit_softmax(q, k, txt.shape[1], (13, 19))


def assert_recorded_equals_explicit(result: dict, text: int) -> None:
    """Levels 2 (13×19 token grid) and 4 (pooled 7×10) equal the explicit maps; block outputs are unchanged."""
    levels, expected = result["levels"], result["expected"]
    assert levels[2].mean.shape == (1, text, 13, 19)
    assert torch.allclose(levels[2].mean.double(), expected, atol=1e-6)
    pooled = torch.nn.functional.avg_pool2d(expected, 2, ceil_mode=True)
    assert levels[4].mean.shape == (1, text, 7, 10)
    assert torch.allclose(levels[4].mean.double(), pooled, atol=1e-6)
    assert torch.allclose(levels[4].mean.sum(dim=1), torch.ones(1, 7, 10), atol=1e-5)
    for recorded, plain in zip(result["outputs"]["recorded"], result["outputs"]["plain"], strict=True):
        assert torch.equal(recorded, plain)
