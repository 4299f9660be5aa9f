"""Guidance stays correct and cheap while ComfyUI loads, patches, unloads and reloads the model between runs.

ComfyUI creates weights as inference tensors; guidance replaces each one, in place, by an ordinary tensor (see
guidance/inference_tensors.py). These tests check that no second copy of a weight survives a run, that weights
ComfyUI patches in for one run (LoRA-style) are the ones guided, and that nothing stale is left for the next run.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
from devkit.guided_runs import fresh_model, prompt_case, sample_guided, syngen_config


@pytest.fixture(scope="module")
def setup(harness: Any, tiny_checkpoint: str) -> dict:
    model, clip = fresh_model(harness, tiny_checkpoint)
    return {
        **prompt_case(harness, model, clip),
        "configs": {mode: syngen_config(harness, mode=mode) for mode in ("faithful", "fast")},
    }


def _guided(harness: Any, setup: dict, model: Any, mode: str = "faithful") -> torch.Tensor:
    return sample_guided(harness, setup, setup["configs"][mode], model=model)[0]


def _unet_parameters(model: Any) -> dict[str, torch.Tensor]:
    return dict(model.model.diffusion_model.named_parameters())


def test_no_copy_of_a_weight_outlives_the_first_guided_run(harness: Any, setup: dict) -> None:
    """The original inference-mode weights are freed once replaced: one copy of each weight exists, not two."""
    model = setup["model"]
    before = _unet_parameters(model)
    assert all(param.is_inference() for param in before.values())
    originals = {name: weakref.ref(param) for name, param in before.items()}
    count = sum(param.numel() for param in before.values())
    del before
    _guided(harness, setup, model)
    gc.collect()
    after = _unet_parameters(model)
    assert not any(param.is_inference() for param in after.values())
    assert sum(param.numel() for param in after.values()) == count
    alive = [name for name, ref in originals.items() if ref() is not None]
    assert alive == [], f"{len(alive)} original weights still referenced, e.g. {alive[:3]}"


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_unloading_and_reloading_between_runs_gives_the_same_image(harness: Any, setup: dict, mode: str) -> None:
    import comfy.model_management

    first = _guided(harness, setup, setup["model"], mode)
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    second = _guided(harness, setup, setup["model"], mode)
    assert torch.equal(first, second)


def test_weights_patched_for_one_run_are_guided_and_removed_after(harness: Any, setup: dict) -> None:
    """A LoRA-style weight patch on a clone is applied for its run, guided, and gone for the next run."""
    model = setup["model"]
    reference = _guided(harness, setup, model)
    weights_before = {name: param.detach().clone() for name, param in _unet_parameters(model).items()}
    patched = model.clone()
    keys = [key for key in patched.model_state_dict() if key.endswith("attn2.to_q.weight")]
    assert keys
    generator = torch.Generator().manual_seed(0)
    state = patched.model_state_dict()
    with torch.inference_mode():
        patches = {key: (torch.randn(state[key].shape, generator=generator) * 0.5,) for key in keys}
    assert set(patched.add_patches(patches, 1.0)) == set(keys)
    with_patch = _guided(harness, setup, patched)
    assert (with_patch - reference).abs().max() > 1e-3
    again = _guided(harness, setup, model)
    assert torch.equal(again, reference)
    for name, param in _unet_parameters(model).items():
        assert torch.equal(param, weights_before[name]), name
