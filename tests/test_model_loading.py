"""Guidance on models that upstream ComfyUI loads with dynamic VRAM, and with its multi-GPU option.

ComfyUI 0.3.75 (the version these tests run on) has neither; ``devkit.vram_paths`` adds upstream's two
dynamic-VRAM methods to the real 0.3.75 ``ModelPatcher`` (see there). tests/test_dit_model_loading.py runs the same
paths on Flux.1 and SD3.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
from devkit.guided_runs import assert_same_prediction, fresh_model, prompt_case, sample_guided, syngen_config
from devkit.vram_paths import as_dynamic, dynamic_patcher_class


@pytest.fixture(scope="module")
def setup(harness: Any, tiny_checkpoint: str) -> dict:
    model, clip = fresh_model(harness, tiny_checkpoint)
    dynamic_class = dynamic_patcher_class()
    return {
        **prompt_case(harness, model, clip),
        "dynamic": as_dynamic(model, dynamic_class),
        "dynamic_class": dynamic_class,
        "config": syngen_config(harness),
    }


def _ksampler_node(harness: Any, setup: dict, model: Any) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        out = harness.node("BindingGuidedKSampler").sample(
            model,
            7,
            3,
            5.0,
            "euler",
            "karras",
            setup["positive"],
            setup["negative"],
            latent,
            1.0,
            setup["bindings"],
            setup["config"],
        )
    return out["result"][0]["samples"]


def test_the_sampler_node_refuses_a_dynamic_model_before_touching_it(harness: Any, setup: dict) -> None:
    """Inside SamplerCustom the pack cannot swap the model: it stops with the fix, before any weight changes."""
    errors = harness.module("guidance.errors")
    dynamic = setup["dynamic"]
    weights = list(dynamic.model.diffusion_model.parameters())
    assert all(weight.is_inference() for weight in weights)
    with pytest.raises(errors.BindingGuidanceError, match="--disable-dynamic-vram") as raised:
        sample_guided(harness, setup, setup["config"], model=dynamic, steps=3)
    assert "Binding-Guided KSampler" in str(raised.value)
    assert all(weight.is_inference() for weight in dynamic.model.diffusion_model.parameters())


def test_the_ksampler_node_guides_a_classic_clone_of_a_dynamic_model(harness: Any, setup: dict) -> None:
    """Same image as the classically loaded model, and one reload for repeated runs of the same model."""
    dynamic_class = setup["dynamic_class"]
    dynamic_class.classic_clones = 0
    from_dynamic = _ksampler_node(harness, setup, setup["dynamic"])
    again = _ksampler_node(harness, setup, setup["dynamic"])
    assert dynamic_class.classic_clones == 1
    classic = _ksampler_node(harness, setup, setup["model"])
    for result in (from_dynamic, again):
        if setup["model"].load_device.type == "cpu":
            assert torch.equal(result, classic)
        else:  # a GPU's attention backward accumulates with atomics: equal to the dtype's rounding
            assert_same_prediction(result, classic, setup["model"])
    guided_without_bindings = harness.module("guidance.inputs").PromptBindings(
        prompt=setup["bindings"].prompt,
        layout=harness.module("binding_losses.types").TokenLayout(bindings=(), prompt_positions=()),
    )
    unguided = _ksampler_node(harness, {**setup, "bindings": guided_without_bindings}, setup["model"])
    assert (classic - unguided).abs().max() > 1e-4  # the guidance really moved the latent


def test_a_dynamic_model_comfyui_cannot_reload_gets_a_clear_error(harness: Any, setup: dict) -> None:
    errors = harness.module("guidance.errors")
    dynamic_class = setup["dynamic_class"]
    other = setup["model"].clone()
    other.__class__ = dynamic_class
    dynamic_class.reload_error = RuntimeError(
        "Cannot create non-dynamic delegate: cached_patcher_init is not initialized."
    )
    try:
        with pytest.raises(errors.BindingGuidanceError, match="Start ComfyUI with --disable-dynamic-vram"):
            _ksampler_node(harness, setup, other)
    finally:
        dynamic_class.reload_error = None


def test_the_classic_copy_lives_as_long_as_the_model_it_was_made_from(harness: Any, setup: dict) -> None:
    """Re-running reuses the copy; once ComfyUI lets the dynamic model go, the copy (a whole model) goes too."""
    loading = harness.module("guidance.model_loading")
    source = setup["model"].clone()
    source.__class__ = setup["dynamic_class"]
    copy = loading.classic_model(source)
    assert copy is not source
    assert not loading.is_dynamic(copy)
    assert loading.classic_model(source) is copy
    assert loading.classic_model(source.clone()) is not copy  # a clone may carry other patches: its own copy
    copy_alive = weakref.ref(copy)
    del copy, source
    gc.collect()
    assert copy_alive() is None


def test_models_without_dynamic_vram_are_used_as_they_are(harness: Any, setup: dict) -> None:
    loading = harness.module("guidance.model_loading")
    assert not loading.is_dynamic(setup["model"])
    assert loading.classic_model(setup["model"]) is setup["model"]
    loading.require_classic(setup["model"])


def test_the_guidance_pass_drops_the_multi_gpu_split(harness: Any) -> None:
    """ComfyUI runs multi-GPU conditionings in worker threads without gradients; guidance runs on one device."""
    loading = harness.module("guidance.model_loading")
    options = {"multigpu_clones": {"cuda:1": object()}, "transformer_options": {"x": 1}}
    single = loading.single_device(options)
    assert "multigpu_clones" not in single
    assert single["transformer_options"] is options["transformer_options"]
    assert "multigpu_clones" in options
    plain = {"transformer_options": {}}
    assert loading.single_device(plain) is plain
