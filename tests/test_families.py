"""SD2.x (v-prediction) and SDXL on tiny real checkpoints, and non-UNet models refused by family name.

Every model here goes through ComfyUI's own loaders and classes: CheckpointLoaderSimple for SD2/SDXL, and
``comfy.supported_models`` + ModelPatcher for the DiT models that must be refused.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from devkit.guided_runs import assert_lowered

PROMPT = "a pink sunflower and a yellow flamingo"
STEPS = 4
SAMPLER = "euler"
SCHEDULER = "karras"

FAMILIES = {
    # arch: (model config class, model type, context dim, (H, W) of the batch-2 latent used for guided sampling)
    "sd2": ("SD20", "V_PREDICTION", 1024, (10, 14)),  # odd at factor 2 (5×7)
    "sdxl": ("SDXL", "EPS", 2048, (13, 19)),  # 832×1216 proportions (152×104 latent), scaled down 8×: all odd
}

# The factor-4 ("16×16 at SD1.x 512 px") level of each family: block ids, transformer depth, heads × head dim.
# SD2: the real SD2 layout (input 7, 8; output 3, 4, 5); the tiny model has 640 channels there (real SD2: 1280,
# 20 heads). SDXL: the real SDXL layout (input 7, 8 and output 0, 1, 2, ten transformer blocks each); the tiny
# model has 320 channels there (real SDXL: 1280, 20 heads).
MAIN_LEVEL = {
    "sd2": ({("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)}, 1, 10, 64),
    "sdxl": ({("input", 7), ("input", 8), ("output", 0), ("output", 1), ("output", 2)}, 10, 5, 64),
}
ALL_FACTORS = {"sd2": {1, 2, 4}, "sdxl": {2, 4}}
STEP_SIZES = {"sd2": 200.0, "sdxl": 1000.0}  # SynGen step size of the guided runs (see the family fixture)


def _ceil_div(size: int, factor: int) -> int:
    return math.ceil(size / factor)


_ENCODED: dict[str, dict] = {}


def _encoded(harness: Any, arch: str, model: Any, clip: Any) -> dict:
    """The family's prompts encoded once per test session (SDXL's bigG text encoder is slow on CPU)."""
    if arch not in _ENCODED:
        with torch.inference_mode():
            positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
            negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
        bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(clip, PROMPT)
        _ENCODED[arch] = {"positive": positive, "negative": negative, "bindings": bindings}
    return _ENCODED[arch]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, harness: Any) -> dict:
    """One family's loaded checkpoint, encoded prompts and parsed bindings (module scope: built once per family)."""
    arch = request.param
    model, clip, _ = request.getfixturevalue(arch)
    objectives = harness.module("binding_losses.objectives")
    inputs = harness.module("guidance.inputs")
    encoded = _encoded(harness, arch, model, clip)
    positive, negative, bindings = encoded["positive"], encoded["negative"], encoded["bindings"]
    return {
        "arch": arch,
        "model": model,
        "clip": clip,
        "positive": positive,
        "negative": negative,
        "bindings": bindings,
        # The random tiny models have a nearly flat loss. The descent test needs an update that moves the loss by far
        # more than float rounding (assert_lowered), so each family gets its own step size: SD2 STEP_SIZES["sd2"];
        # SDXL 1000, where the two guided steps drop the loss by 1.2e-5 and 2.9e-6 (from -1.5e-4 and -3.9e-4:
        # 24-100 units of 2^-23, 10^4-10^5 float epsilons of the loss), against 6e-8 and 1.2e-7 (rounding) at
        # step size 2. The CPU convolution kernel is pinned: "auto" may pick other kernels in another process
        # (test_cpu_convolution checks that they agree).
        "config": inputs.GuidanceConfig(
            objective=objectives.make_objective("syngen", scale_factor=STEP_SIZES[arch]),
            measure_after_step=True,
        ),
    }


def _guided(harness: Any, family: dict, latent: torch.Tensor, bindings: Any = None, positive: Any = None,
            cfg: float = 5.0, steps: int = STEPS) -> tuple[torch.Tensor, Any]:
    entry = harness.module("guidance.sample")
    result = entry.guided_sample(family["model"], 7, steps, cfg, SAMPLER, SCHEDULER, positive or family["positive"],
                                 family["negative"], latent, bindings or family["bindings"], family["config"])
    return result.samples, result.report


def _stock(family: dict, latent: torch.Tensor, positive: Any = None, cfg: float = 5.0,
           steps: int = STEPS) -> torch.Tensor:
    import comfy.sample

    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(family["model"], noise, steps, cfg, SAMPLER, SCHEDULER,
                                   positive or family["positive"], family["negative"], latent, disable_pbar=True,
                                   seed=7)


def _head_dims(diffusion_model: torch.nn.Module, layer: Any) -> tuple[int, int]:
    """(heads, head dim) of one recorded layer, read from its attn2 module."""
    kind, index = layer.block
    block = diffusion_model.middle_block if kind == "middle" else getattr(diffusion_model, f"{kind}_blocks")[index]
    transformer = next(m for m in block.children() if hasattr(m, "transformer_blocks"))
    attn2 = transformer.transformer_blocks[layer.depth_index].attn2
    return int(attn2.heads), int(attn2.to_q.out_features) // int(attn2.heads)


def test_checkpoint_loads_as_its_family(harness: Any, family: dict) -> None:
    """CheckpointLoaderSimple detects the family and prediction type; the encoders give the family's context."""
    import comfy.model_sampling

    layers = harness.module("attention_patch.layers")
    config_name, model_type, context_dim, _ = FAMILIES[family["arch"]]
    base = family["model"].model
    assert layers.model_family(family["model"]) == config_name
    assert base.model_type.name == model_type
    is_v = isinstance(base.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert is_v == (model_type == "V_PREDICTION")
    cond, extras = family["positive"][0]
    assert cond.shape == (1, 77, context_dim)
    assert torch.isfinite(cond).all()
    if family["arch"] == "sdxl":
        assert extras["pooled_output"].shape == (1, 1280)  # clip_g's projected pooled output


def test_token_positions_match_the_real_tokenizer(family: dict) -> None:
    """Parse Bindings' positions: pink=2 → sunflower=3, yellow=6 → flamingo=7 (SD2's OpenCLIP pads with 0;
    SDXL's clip_l and clip_g give the same positions in the concatenated 768+1280 context)."""
    layout = family["bindings"].layout
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((3,), ((2,),)), ((7,), ((6,),))]
    assert tuple(layout.prompt_positions) == tuple(range(1, 8))
    tokens = family["clip"].tokenize(PROMPT)
    if family["arch"] == "sdxl":
        ids_g = [t[0] for t in tokens["g"][0]]
        ids_l = [t[0] for t in tokens["l"][0]]
        assert ids_g[:9] == ids_l[:9] and ids_g[8] == 49407  # same ids up to EOT
        assert ids_g[9:] == [0] * 68 and ids_l[9:] == [49407] * 68  # only the padding differs
    else:
        ids = [t[0] for t in tokens["h"][0]]
        assert ids[8] == 49407 and ids[9:] == [0] * 68


@pytest.mark.parametrize("latent_hw", [(16, 16), (26, 38), (13, 19)])
def test_layers_and_resolutions_come_from_the_model(harness: Any, family: dict, latent_hw: tuple[int, int]) -> None:
    """Block ids, depth, heads × head dim at factor 4, and the recorded map size at this latent size."""
    import comfy.sampler_helpers
    import comfy.samplers

    patch = harness.module("attention_patch")
    model = family["model"]
    diffusion_model = model.model.diffusion_model
    all_layers = patch.require_unet(model)
    assert {layer.factor for layer in all_layers if layer.block[0] != "middle"} == ALL_FACTORS[family["arch"]]
    main = patch.choose_main_factor(all_layers, 4)
    assert main == 4
    blocks, depth, heads, head_dim = MAIN_LEVEL[family["arch"]]
    chosen = patch.layers_at(all_layers, {main})
    assert {layer.block for layer in chosen} == blocks
    assert len(chosen) == len(blocks) * depth
    assert {layer.heads for layer in chosen} == {heads}
    assert {_head_dims(diffusion_model, layer) for layer in chosen} == {(heads, head_dim)}

    # Record one conditional forward and check each level's map size.
    height, width = latent_hw
    recorder = patch.AttentionRecorder(patch.layers_at(all_layers, {2, 4}), stop_early=True)
    latent = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        conds = {"positive": comfy.sampler_helpers.convert_cond(family["positive"])}
        conds = comfy.samplers.process_conds(model.model, latent, conds, model.load_device)
        options = recorder.model_options_with_patches(model.model_options)
        model_conds = {key: value.cond for key, value in conds["positive"][0]["model_conds"].items()}
        try:
            model.model.apply_model(latent, torch.tensor([1.0]), transformer_options=options["transformer_options"],
                                    **model_conds)
        except patch.RecordingComplete:
            pass
    levels = recorder.levels()
    for factor in (2, 4):
        expected = (_ceil_div(_ceil_div(height, 2), factor // 2), _ceil_div(_ceil_div(width, 2), factor // 2))
        assert tuple(levels[factor].mean.shape) == (1, 77, *expected), factor
        assert torch.allclose(levels[factor].mean.sum(dim=1), torch.ones(1, *expected), atol=1e-4)


def test_v_prediction_step_scale_is_the_unet_input_scale(harness: Any, sd2: tuple) -> None:
    """Under V_PREDICTION the UNet input is still z = x/√(σ²+1), so the latent step scale is σ²+1 (see docs)."""
    model = sd2[0]
    sampling = model.model.model_sampling
    sigma = torch.tensor([0.5, 3.0, 14.6])
    c = sampling.calculate_input(sigma, torch.ones(3))
    assert torch.allclose(c, 1.0 / torch.sqrt(sigma**2 + 1.0))
    # The sampler's own scale function on this model.
    update_scale = harness.module("guidance.run").update_scale
    assert torch.allclose(update_scale(sampling, 1.0, sigma, torch.ones(3), None), sigma**2 + 1.0)


def test_guided_sampling_lowers_the_loss_batch_two_non_square(harness: Any, family: dict) -> None:
    """SynGen lowers its loss at every guided step, for each image of a batch of two, on a non-square latent.

    cfg 1 (ComfyUI then skips the unconditional pass) halves the CPU time; guidance only uses the positive.
    4 steps: SynGen guides steps 0 and 1 (i < round(0.5·N)).
    """
    height, width = FAMILIES[family["arch"]][3]
    latent = torch.zeros(2, 4, height, width)
    guided, report = _guided(harness, family, latent, cfg=1.0)
    assert guided.shape == latent.shape and torch.isfinite(guided).all()
    assert [record.step for record in report.steps] == [0, 1]
    for record in report.steps:
        assert_lowered(record)
    assert report.main_factor == 4
    assert report.last_maps is not None
    assert tuple(report.last_maps.shape) == (2, 77, _ceil_div(height, 4), _ceil_div(width, 4))
    stock = _stock(family, latent, cfg=1.0)
    for index in range(2):
        assert (guided[index] - stock[index]).abs().max() > 1e-3


def test_no_leak_guided_run_then_stock_is_bit_identical(harness: Any, family: dict) -> None:
    latent = torch.zeros(1, 4, 8, 8)
    model = family["model"]
    before = _stock(family, latent)
    options_before = repr(model.model_options)
    _guided(harness, family, latent)
    assert repr(model.model_options) == options_before
    assert torch.equal(_stock(family, latent), before)


# ---------------------------------------------------------------------------------------------------------------
# SDXL conditioning: pooled output and size conditioning reach the UNet unchanged; the node matches KSampler.


def _adm_rows(model: Any) -> tuple[list[torch.Tensor], Any]:
    """Collect every ``y`` (pooled + size embedding) row that enters the SDXL UNet's label embedding."""
    rows: list[torch.Tensor] = []

    def hook(_module: Any, args: tuple) -> None:
        rows.extend(row.detach().float().clone() for row in args[0])

    handle = model.model.diffusion_model.label_emb.register_forward_pre_hook(hook)
    return rows, handle


def _has_row(rows: list[torch.Tensor], row: torch.Tensor) -> bool:
    return any(torch.equal(row, other) for other in rows)


def test_sdxl_pooled_and_size_conditioning_pass_through(harness: Any, sdxl: tuple) -> None:
    """The guidance forward sees the same ``y`` (pooled output + size embedding) KSampler gives the UNet."""
    model, clip, _ = sdxl
    with torch.inference_mode():
        encode_sdxl = harness.nodes.NODE_CLASS_MAPPINGS["CLIPTextEncodeSDXL"].execute  # a V3 node
        positive = encode_sdxl(clip=clip, width=1216, height=832, crop_w=16, crop_h=8, target_width=1216,
                               target_height=832, text_g=PROMPT, text_l=PROMPT).args[0]
    encoded = _encoded(harness, "sdxl", model, clip)
    extras = positive[0][1]
    assert extras["pooled_output"].shape == (1, 1280) and extras["width"] == 1216 and extras["crop_w"] == 16
    family = {"model": model, "positive": positive, "negative": encoded["negative"], "bindings": encoded["bindings"],
              "config": harness.module("guidance.inputs").GuidanceConfig(
                  objective=harness.module("binding_losses.objectives").make_objective("syngen"))}
    latent = torch.zeros(1, 4, 16, 16)
    expected_y = model.model.encode_adm(pooled_output=extras["pooled_output"], width=1216, height=832, crop_w=16,
                                        crop_h=8, target_width=1216, target_height=832)[0].float()

    stock_rows, handle = _adm_rows(model)
    try:
        _stock(family, latent)
    finally:
        handle.remove()
    guided_rows, handle = _adm_rows(model)
    try:
        _, report = _guided(harness, family, latent)
    finally:
        handle.remove()
    assert report.steps and all(record.stepped for record in report.steps)
    assert _has_row(stock_rows, expected_y)
    # Every y the guided run fed the UNet (guidance forwards included) is one KSampler fed it too.
    assert guided_rows and all(_has_row(stock_rows, row) for row in guided_rows)
    guided_hits = sum(torch.equal(row, expected_y) for row in guided_rows)
    assert guided_hits > sum(torch.equal(row, expected_y) for row in stock_rows)  # guidance forwards used it too


def _node_latent(result: Any) -> torch.Tensor:
    values = result["result"] if isinstance(result, dict) else result
    return values[0]["samples"]


def test_sdxl_binding_guided_ksampler_takes_conditioning_like_ksampler(harness: Any, sdxl: tuple) -> None:
    """Same SDXL inputs as KSampler: empty bindings give KSampler's exact latent; real bindings change it."""
    model, clip, _ = sdxl
    inputs = harness.module("guidance.inputs")
    types = harness.module("binding_losses.types")
    objectives = harness.module("binding_losses.objectives")
    config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"))
    encoded = _encoded(harness, "sdxl", model, clip)
    empty = inputs.PromptBindings(prompt=PROMPT, layout=types.TokenLayout((), tuple(range(1, 8))))
    assert empty.is_empty and not encoded["bindings"].is_empty
    common = {"model": model, "seed": 3, "steps": STEPS, "cfg": 5.0, "sampler_name": SAMPLER,
              "scheduler": SCHEDULER, "positive": encoded["positive"], "negative": encoded["negative"],
              "latent_image": {"samples": torch.zeros(1, 4, 16, 16)}, "denoise": 1.0}
    ours = harness.node("BindingGuidedKSampler")
    with torch.inference_mode():
        stock = harness.node("KSampler").sample(**common)[0]["samples"]
        unguided = _node_latent(ours.sample(bindings=empty, config=config, **common))
        guided = _node_latent(ours.sample(bindings=encoded["bindings"], config=config, **common))
    assert torch.equal(unguided, stock)
    assert torch.isfinite(guided).all() and (guided - stock).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# DiT models the pack does not guide yet: a tiny real LTXV (video) model from ComfyUI's own classes is refused before
# sampling. Flux.1 and SD3 are guided (tests/test_joint_attention.py, tests/test_dit_guidance.py).

DIT_CONFIGS = {
    "LTXV": {"image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
             "num_attention_heads": 2, "caption_channels": 32, "num_layers": 1},
}


def _tiny_dit(family_name: str) -> Any:
    import comfy.model_patcher
    import comfy.supported_models
    from devkit.tiny_models import init_weights

    model_config = getattr(comfy.supported_models, family_name)(dict(DIT_CONFIGS[family_name]))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, 0)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.mark.parametrize("family_name", sorted(DIT_CONFIGS))
def test_dit_models_are_refused_naming_the_family(harness: Any, family_name: str) -> None:
    patch = harness.module("attention_patch")
    entry = harness.module("guidance.sample")
    inputs = harness.module("guidance.inputs")
    objectives = harness.module("binding_losses.objectives")
    types = harness.module("binding_losses.types")
    model = _tiny_dit(family_name)
    assert patch.model_family(model) == family_name
    with pytest.raises(patch.UnsupportedModelError, match=rf"connected model is {family_name}\b"):
        patch.require_unet(model)

    layout = types.TokenLayout(bindings=(types.TokenBinding((3,), ((2,),)),), prompt_positions=(1, 2, 3))
    bindings = inputs.PromptBindings(prompt=PROMPT, layout=layout)
    config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"))
    cond = [[torch.randn(1, 8, 32), {"pooled_output": torch.randn(1, 32)}]]
    calls: list[int] = []
    handle = model.model.diffusion_model.register_forward_pre_hook(lambda *_: calls.append(1))
    latent = torch.zeros(1, 128, 1, 2, 2) if family_name == "LTXV" else torch.zeros(1, 16, 8, 8)
    try:
        with pytest.raises(patch.UnsupportedModelError, match=family_name) as caught:
            entry.guided_sample(model, 0, STEPS, 3.0, SAMPLER, "simple", cond, cond, latent, bindings, config)
    finally:
        handle.remove()
    assert "DiT/MMDiT" in str(caught.value) and "UNet" in str(caught.value)
    assert calls == []  # refused before the first denoising step
