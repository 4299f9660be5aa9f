"""Tiny Flux.1 and SD3 read from files by ComfyUI's own loaders, then guided through the pack's nodes.

The diffusion models are read by ComfyUI's UNETLoader (weight_dtype default and fp8_e4m3fn) and
CheckpointLoaderSimple, so ComfyUI's detection rebuilds each one from its weights: Flux.1-dev at the smallest size
that detection allows (hidden 3072, one double-stream and one single-stream block, stored in fp8), SD3 at depth 2.
The text encoders are read by ``comfy.sd.load_clip``, the function DualCLIPLoader and TripleCLIPLoader call, with
ComfyUI's narrowing config override (see ``devkit.tiny_dit_files``). The files are written once into the tests'
model cache.

What is asserted: detection picks the real family and sizes; Parse Bindings and the Binding-Guided KSampler node
lower the SynGen loss at every guided step; a plain KSampler run after the guided one is bit-identical to one
before it; fp8 weights (cast layer by layer to fp32 by ComfyUI's manual cast) give the default dtype's result; the
SD3.5 example workflow runs in ComfyUI's executor with its checkpoint loader reading the tiny file.

Cost on the 2-core VM: writing the files once about 25 s (the Flux file 531 MB, SD3's T5 266 MB); each run of this
module 45–60 s, about 40 of them the full-width Flux (fp8's per-layer casts make its forward 2-3× slower on CPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TEST_CACHE
from devkit.dit_runs import config
from devkit.guided_runs import PROMPT
from devkit.tiny_dit_files import cached_dit_file, load_tiny_clip, register_model_folder

LOADS = {
    "flux-unet-default": ("flux", "UNETLoader", "default"),
    "flux-unet-fp8": ("flux", "UNETLoader", "fp8_e4m3fn"),
    "sd3-checkpoint": ("sd3", "CheckpointLoaderSimple", None),
    "sd3-unet-fp8": ("sd3", "UNETLoader", "fp8_e4m3fn"),
}
"""Per case: the family, ComfyUI's loader node and its weight_dtype."""

LEAK_CHECKED = ("flux-unet-default", "sd3-checkpoint", "sd3-unet-fp8")
"""Cases with a plain run before and after the guided one (fp8 Flux's per-layer casts make each forward 2-3× slower
on CPU, and its guidance equals the default dtype's)."""

FAMILY_CFG = {"flux": 1.0, "sd3": 4.5}
STEPS = 2
LATENT = {"samples": torch.zeros(1, 16, 16, 16)}


@pytest.fixture(scope="module")
def clips(harness: Any) -> dict:
    """Each family's tiny text encoders, read by ``comfy.sd.load_clip``, with the model cache registered."""
    register_model_folder(TEST_CACHE)
    with torch.inference_mode():
        return {arch: load_tiny_clip(arch, TEST_CACHE) for arch in FAMILY_CFG}


def _load(harness: Any, case: str) -> Any:
    arch, loader, weight_dtype = LOADS[case]
    name = cached_dit_file(arch, TEST_CACHE)
    with torch.inference_mode():
        if loader == "UNETLoader":
            return harness.node("UNETLoader").load_unet(name, weight_dtype)[0]
        return harness.node("CheckpointLoaderSimple").load_checkpoint(name)[0]


def _plain(harness: Any, model: Any, case: dict, steps: int) -> torch.Tensor:
    with torch.inference_mode():
        return harness.node("KSampler").sample(model, 7, steps, case["cfg"], "euler", "simple", case["positive"],
                                               case["negative"], LATENT)[0]["samples"]


def _guided(harness: Any, model: Any, case: dict) -> tuple[torch.Tensor, dict]:
    with torch.inference_mode():
        out = harness.node("BindingGuidedKSampler").sample(
            model, 7, STEPS, case["cfg"], "euler", "simple", case["positive"], case["negative"], LATENT, 1.0,
            case["bindings"], config(harness))
    return out["result"][0]["samples"], out["ui"]["binding_report"][0]


def _loaded_as(model: Any) -> dict:
    """What ComfyUI's loader made: model class, detected config, weight dtype and manual-cast dtype."""
    return {"model_class": type(model.model).__name__, "unet_config": dict(model.model.model_config.unet_config),
            "weight_dtype": model.model.get_dtype(), "manual_cast": model.model.manual_cast_dtype}


@pytest.fixture(scope="module")
def runs(harness: Any, clips: dict) -> Any:
    """``run(case)``: one load of the case's model, a plain run, a guided run and a plain run again (cached)."""
    import comfy.model_management

    done: dict[str, dict] = {}

    def run(name: str) -> dict:
        if name in done:
            return done[name]
        arch = LOADS[name][0]
        clip = clips[arch]
        with torch.inference_mode():
            bindings, _, positive = harness.node("ParseBindings").parse(clip, PROMPT, "robust", "en_core_web_sm",
                                                                        "")["result"]
            negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
        case = {"cfg": FAMILY_CFG[arch], "positive": positive, "negative": negative, "bindings": bindings}
        model = _load(harness, name)
        options_before = repr(model.model_options)
        before = _plain(harness, model, case, 1) if name in LEAK_CHECKED else None
        guided, report = _guided(harness, model, case)
        after = _plain(harness, model, case, 1) if name in LEAK_CHECKED else None
        done[name] = {**_loaded_as(model), "options_unchanged": repr(model.model_options) == options_before,
                      "before": before, "guided": guided, "report": report, "after": after}
        del model  # the full-width Flux holds 2 GB in fp32: let ComfyUI drop it before the next load
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        return done[name]

    return run


def test_detection_rebuilds_each_family_from_its_weights(runs: Any) -> None:
    flux, flux_fp8 = runs("flux-unet-default"), runs("flux-unet-fp8")
    assert flux["model_class"] == "Flux"
    config = flux["unet_config"]
    assert (config["hidden_size"], config["num_heads"], config["depth"], config["depth_single_blocks"]) == (3072, 24, 1,
                                                                                                            1)
    assert config["guidance_embed"] and config["context_in_dim"] == 64
    assert flux["weight_dtype"] == torch.float32 and flux["manual_cast"] is None
    assert flux_fp8["weight_dtype"] == torch.float8_e4m3fn and flux_fp8["manual_cast"] == torch.float32
    for name in ("sd3-checkpoint", "sd3-unet-fp8"):
        sd3 = runs(name)
        assert sd3["model_class"] == "SD3" and sd3["unet_config"]["depth"] == 2
    assert runs("sd3-unet-fp8")["weight_dtype"] == torch.float8_e4m3fn


@pytest.mark.parametrize("name", sorted(LOADS))
def test_guidance_lowers_the_loss_at_every_guided_step(runs: Any, name: str) -> None:
    result = runs(name)
    stepped = [step for step in result["report"]["steps"] if step["stepped"]]
    assert result["report"]["guidance_applied"] and stepped, result["report"]
    for step in stepped:
        assert step["loss_after_update"] < step["loss_before_update"], (name, step)
    assert torch.isfinite(result["guided"]).all()


@pytest.mark.parametrize("name", LEAK_CHECKED)
def test_a_plain_run_after_guidance_is_bit_identical(runs: Any, name: str) -> None:
    result = runs(name)
    assert result["options_unchanged"]
    assert torch.equal(result["after"], result["before"])


def test_fp8_weights_are_guided_like_the_default_dtype(runs: Any) -> None:
    """The Flux file holds fp8 values, so both weight dtypes compute with equal fp32 weights: the fp8 model's
    weights are cast layer by layer in the guidance pass too, and its gradient is the default dtype's."""
    default, fp8 = runs("flux-unet-default"), runs("flux-unet-fp8")
    assert torch.equal(fp8["guided"], default["guided"])


def test_the_sd35_workflow_runs_in_the_executor_with_comfyuis_checkpoint_loader(harness: Any, clips: dict) -> None:
    """workflows/api/syngen_sd35.json through ComfyUI's executor: its CheckpointLoaderSimple reads the tiny SD3
    checkpoint (MODEL and VAE; TripleCLIPLoader is the tiny stand-in) and SynGen lowers the loss. (The Flux workflow
    with UNETLoader reading the 531 M-parameter file takes about 13 s more on CPU; the node tests above cover it.)"""
    import json

    from devkit.comfy_env import PACK_ROOT
    from devkit.tiny_dit_models import register_tiny_dit_nodes, use_tiny_dit

    register_tiny_dit_nodes(harness.nodes, TEST_CACHE)
    api = json.loads((PACK_ROOT / "workflows" / "api" / "syngen_sd35.json").read_text())
    prompt = use_tiny_dit(api, size=128, steps=4, model_file=cached_dit_file("sd3", TEST_CACHE))
    config_node = next(node for node in prompt.values() if node["class_type"] == "BindingLossConfig")
    config_node["inputs"]["advanced"] = "measure_after_step = true"
    outputs = harness.run_prompt(prompt)
    sampler = next(k for k, node in prompt.items() if node["class_type"] == "BindingGuidedKSampler")
    steps_run = [step for step in outputs[sampler]["binding_report"][0]["steps"] if step["stepped"]]
    assert steps_run and all(s["loss_after_update"] < s["loss_before_update"] for s in steps_run), steps_run
    save = next(k for k, node in prompt.items() if node["class_type"] == "SaveImage")
    assert len(outputs[save]["images"]) == 1
