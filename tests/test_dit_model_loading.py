"""Flux.1 and SD3 through ComfyUI's model-loading paths: dynamic VRAM, partial (lowvram) loading, unload and reload
between runs, and weights patched for one run.

- Dynamic VRAM (upstream ComfyUI; ``devkit.vram_paths`` adds its API to 0.3.75's ModelPatcher): the Binding-Guided
  KSampler guides a classic clone and gives the classic model's image; inside SamplerCustom the sampler refuses the
  model before touching a weight (as tests/test_model_loading.py asserts for the UNet).
- ComfyUI unloading the model and loading it again (its weights come back as inference tensors) gives the same image;
  a LoRA-style patch on the attention weights of a clone is guided and gone for the next run (as
  tests/test_model_lifecycle.py asserts for the UNet).

- Partial loading: ComfyUI loads a model on the CPU in full, so ``devkit.vram_paths.partially_unloaded`` has
  ComfyUI's own ``partially_unload`` take half or all of it off after loading (as ``free_memory`` does when another
  model needs room): the guidance pass then runs through the lowvram forward (weights cast layer by layer, weight
  patches computed on the fly) and gives the fully loaded model's image; the next run loads the model in full again
  (tests/test_cuda.py checks ``--lowvram``/``--novram`` themselves for the UNet on a GPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TEST_CACHE
from devkit.dit_runs import config, encoded_case, guided
from devkit.tiny_dit_files import load_tiny_clip
from devkit.tiny_dit_models import tiny_flux_model, tiny_sd3_model
from devkit.vram_paths import as_dynamic, dynamic_patcher_class, partially_unloaded

FAMILY_CFG = {"flux": 1.0, "sd3": 4.5}
LATENT = {"samples": torch.zeros(1, 16, 32, 32)}


def _as_loaded(arch: str) -> Any:
    """The family's tiny model with its weights made as a loader node makes them (inference tensors)."""
    with torch.inference_mode():
        return tiny_flux_model() if arch == "flux" else tiny_sd3_model()


@pytest.fixture(scope="module", params=sorted(FAMILY_CFG))
def dit(request: pytest.FixtureRequest, harness: Any) -> dict:
    """One family's tiny model (see _as_loaded), text encoders, encoded prompt, bindings and SynGen config."""
    arch = request.param
    case = encoded_case(harness, _as_loaded(arch), load_tiny_clip(arch, TEST_CACHE))
    return {**case, "arch": arch, "cfg": FAMILY_CFG[arch], "dynamic_class": dynamic_patcher_class(),
            "config": config(harness)}


def _ksampler(harness: Any, dit: dict, model: Any, guided_by: str = "BindingGuidedKSampler") -> torch.Tensor:
    """Three euler steps (seed 7) with the Binding-Guided KSampler node, or with ComfyUI's KSampler."""
    args = (model, 7, 3, dit["cfg"], "euler", "simple", dit["positive"], dit["negative"], LATENT)
    with torch.inference_mode():
        if guided_by == "KSampler":
            return harness.node("KSampler").sample(*args)[0]["samples"]
        return harness.node(guided_by).sample(*args, 1.0, dit["bindings"], dit["config"])["result"][0]["samples"]


def test_the_sampler_refuses_a_dynamic_dit_before_touching_it(harness: Any, dit: dict) -> None:
    errors = harness.module("guidance.errors")
    dynamic = as_dynamic(_as_loaded(dit["arch"]), dit["dynamic_class"])  # not yet guided: inference weights
    assert all(weight.is_inference() for weight in dynamic.model.diffusion_model.parameters())
    with pytest.raises(errors.BindingGuidanceError, match="--disable-dynamic-vram"):
        guided(harness, {**dit, "model": dynamic}, dit["config"], cfg=dit["cfg"])
    assert all(weight.is_inference() for weight in dynamic.model.diffusion_model.parameters())


def test_the_ksampler_node_guides_a_classic_clone_of_a_dynamic_dit(harness: Any, dit: dict) -> None:
    """The classic model's image, one reload for repeated runs, and plain sampling unchanged afterwards."""
    dynamic_class = dit["dynamic_class"]
    dynamic_class.classic_clones = 0
    plain_before = _ksampler(harness, dit, dit["model"], "KSampler")
    dynamic = as_dynamic(dit["model"], dynamic_class)
    from_dynamic = _ksampler(harness, dit, dynamic)
    again = _ksampler(harness, dit, dynamic)
    assert dynamic_class.classic_clones == 1
    classic = _ksampler(harness, dit, dit["model"])
    assert torch.equal(from_dynamic, classic) and torch.equal(again, classic)
    assert (classic - plain_before).abs().max() > 1e-4  # the guidance really moved the latent
    for model in (dit["model"], dynamic):
        assert torch.equal(_ksampler(harness, dit, model, "KSampler"), plain_before)


def test_unloading_and_reloading_between_runs_gives_the_same_image(harness: Any, dit: dict) -> None:
    import comfy.model_management

    first = _ksampler(harness, dit, dit["model"])
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    assert torch.equal(_ksampler(harness, dit, dit["model"]), first)


def test_attention_weights_patched_for_one_run_are_guided_and_removed_after(harness: Any, dit: dict) -> None:
    """A LoRA-style patch on every qkv projection of a clone: applied for its run, guided, gone for the next."""
    model = dit["model"]
    reference = _ksampler(harness, dit, model)
    weights_before = {name: p.detach().clone() for name, p in model.model.diffusion_model.named_parameters()}
    patched = _with_qkv_patches(model)
    assert (_ksampler(harness, dit, patched) - reference).abs().max() > 1e-3
    assert torch.equal(_ksampler(harness, dit, model), reference)
    for name, param in model.model.diffusion_model.named_parameters():
        assert torch.equal(param, weights_before[name]), name


def _with_qkv_patches(model: Any) -> Any:
    """A clone with a LoRA-style patch on every qkv projection (the attention guidance differentiates through)."""
    patched = model.clone()
    state = patched.model_state_dict()
    keys = [key for key in state if key.endswith("qkv.weight")]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        patches = {key: (torch.randn(state[key].shape, generator=generator) * 0.5,) for key in keys}
    assert keys and set(patched.add_patches(patches, 1.0)) == set(keys)
    return patched


@pytest.mark.parametrize("fraction", [0.5, 1.0])
@pytest.mark.parametrize("with_patches", [False, True])
def test_a_partially_loaded_dit_is_guided_like_a_fully_loaded_one(harness: Any, dit: dict, fraction: float,
                                                                  with_patches: bool) -> None:
    """Half the weights off (``--lowvram``-like) or all (``--novram``-like), with or without weight patches."""
    model = _with_qkv_patches(dit["model"]) if with_patches else dit["model"]
    plain_before = _ksampler(harness, dit, dit["model"], "KSampler")
    full = _ksampler(harness, dit, model)
    seen: list[dict] = []
    partial = _ksampler(harness, dit, partially_unloaded(model, fraction, seen))
    assert seen and all(s["loaded"] < s["total"] and s["cast_layers"] > 0 for s in seen), seen
    if fraction == 1.0:  # every layer cast; ComfyUI unloads the largest (the patched qkv) last
        assert all(s["cast_layers"] == s["castable_layers"] for s in seen), seen
        assert all((s["lowvram_patches"] > 0) == with_patches for s in seen), seen
    assert torch.equal(partial, full), (partial - full).abs().max()
    assert torch.equal(_ksampler(harness, dit, model), full)  # loaded in full again: the same image
    assert torch.equal(_ksampler(harness, dit, dit["model"], "KSampler"), plain_before)
