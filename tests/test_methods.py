"""Every binding method (and a chain) guides a real ComfyUI sampling run through the pack's own nodes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

PROMPT = "a pink sunflower and a yellow flamingo"
STEPS = 4
# Refinement off keeps each case to one forward+backward per guided step; refinement has its own test below.
CASES = {
    "syngen": "",
    "syngen_entropy": "",
    "attend_and_excite": "refine = false",
    "divide_and_bind": "refine = false",
    "tsam": "refine = false",
}


@pytest.fixture(scope="module")
def graph_parts(harness: Any, sd15: tuple) -> dict:
    model, clip, _ = sd15
    parse = harness.module("nodes.parse_node")
    with torch.inference_mode():
        bindings, preview = parse.parse_prompt_bindings(clip, PROMPT)
        positive = harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]
        negative = harness.node("CLIPTextEncode").encode(clip, "")[0]
    return {"model": model, "bindings": bindings, "preview": preview, "positive": positive, "negative": negative}


def _run(harness: Any, parts: dict, config: Any) -> Any:
    import comfy.sample
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    model = parts["model"]
    latent = torch.zeros(1, 4, 16, 16)
    with torch.inference_mode():
        sigmas = comfy.samplers.KSampler(model, STEPS, model.load_device, "euler", "karras", 1.0,
                                         model_options=model.model_options).sigmas
        sampler = sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), parts["bindings"], config)
        out = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 5), 5.0, sampler, sigmas,
                                         parts["positive"], parts["negative"], latent, disable_pbar=True, seed=5)
    assert torch.isfinite(out).all()
    return sampler.last_report


def test_parse_bindings_finds_both_pairs_and_the_text_attention(harness: Any, graph_parts: dict) -> None:
    layout = graph_parts["bindings"].layout
    assert {(b.noun, b.modifiers) for b in layout.bindings} == {((3,), ((2,),)), ((7,), ((6,),))}
    assert "sunflower" in graph_parts["preview"] and "flamingo" in graph_parts["preview"]
    objectives = harness.module("binding_losses.objectives")
    attention = graph_parts["bindings"].text_self_attention_for(objectives.make_objective("tsam"))
    assert attention.shape == (77, 77)
    assert torch.allclose(attention.sum(-1), torch.ones(77), atol=1e-4)  # rows are distributions
    assert attention.triu(1).abs().max() < 1e-6  # causal


@pytest.mark.parametrize("method", list(CASES))
def test_method_lowers_its_loss(harness: Any, graph_parts: dict, method: str) -> None:
    config_node = harness.module("nodes.config_node")
    # T-SAM's loss on the tiny random model is nearly flat in the latent: at step size 5 or 20 a step moves it by
    # ±1e-7 of 0.017, which is float rounding (it changes with the convolution kernel); at 2000 it drops 4e-6.
    # step_size stops at 1000, so a chain weight of 2 doubles the gradient instead (the same update as 2000).
    step_size, weight = (1000.0, 2.0) if method == "tsam" else (20.0, 1.0)
    config = config_node.build_config(method, step_size, 0.5, CASES[method] + "\nmeasure_after_step = true",
                                      weight=weight)
    report = _run(harness, graph_parts, config)
    stepped = [r for r in report.steps if r.stepped]
    assert stepped, f"{method}: no guided update"
    lowered = [r.loss_after_step < r.loss_before for r in stepped]
    assert sum(lowered) >= 0.5 * len(lowered), [(r.loss_before, r.loss_after_step) for r in stepped]


def test_chained_config_adds_terms_and_keeps_the_first_schedule(harness: Any, graph_parts: dict) -> None:
    config_node = harness.module("nodes.config_node")
    first = config_node.build_config("syngen", 20.0, 0.5)
    chained = config_node.build_config("divide_and_bind", 20.0, 0.25, "refine = false", weight=0.5, previous=first)
    assert [w for w, _ in chained.objective.terms] == [1.0, 0.5]
    assert chained.objective.name == "syngen+divide_and_bind"
    report = _run(harness, graph_parts, chained)
    assert [r.step for r in report.steps] == [0, 1]  # SynGen's half, not D&B's quarter


def test_attend_and_excite_refinement_respects_its_cap_and_shows_progress(harness: Any, graph_parts: dict) -> None:
    config_node = harness.module("nodes.config_node")
    import comfy.utils

    config = config_node.build_config("attend_and_excite", 20.0, 0.5, "max_refinement_steps = 3")
    seen: list[tuple[int, int]] = []
    previous_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        report = _run(harness, graph_parts, config)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous_hook)
    assert report.steps[0].refinement_iterations == 3  # random maps never reach the 0.95 target: the cap holds
    assert [(1, 3), (2, 3), (3, 3)] == seen[:3]  # the progress bar moves during refinement


def test_config_words_override_subjects_and_name_a_missing_word(harness: Any, graph_parts: dict) -> None:
    config_node = harness.module("nodes.config_node")
    sampler_module = harness.module("guidance.sampler")
    config = config_node.build_config("attend_and_excite", 20.0, 0.5, "refine = false", words="flamingo")
    layout = sampler_module.resolve_layout(graph_parts["bindings"], config)
    assert layout.subjects == ((7,),)
    missing = config_node.build_config("attend_and_excite", 20.0, 0.5, words="frog")
    with pytest.raises(sampler_module.BindingGuidanceError, match="'frog' is not a word of the prompt"):
        sampler_module.resolve_layout(graph_parts["bindings"], missing)


def test_bad_advanced_parameter_is_named(harness: Any) -> None:
    config_node = harness.module("nodes.config_node")
    with pytest.raises(ValueError, match="tv_varient"):
        config_node.build_config("divide_and_bind", 20.0, 0.5, "tv_varient = fixed")
    with pytest.raises(ValueError, match="line 1"):
        config_node.build_config("syngen", 20.0, 0.5, "nonsense")


def _invalid_graph_error(harness: Any, tiny_checkpoint: str, **config_inputs: Any) -> str:
    import json

    from conftest import PACK_ROOT

    graph = json.loads((PACK_ROOT / "workflows" / "api" / "syngen_sd15.json").read_text())
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = tiny_checkpoint
        if node["class_type"] == "BindingLossConfig":
            node["inputs"].update(config_inputs)
    with pytest.raises(AssertionError, match="invalid prompt") as raised:
        harness.run_prompt(graph)
    return str(raised.value)


def test_bad_configs_are_rejected_at_validation(harness: Any, tiny_checkpoint: str) -> None:
    assert "smaller than min" in _invalid_graph_error(harness, tiny_checkpoint, step_size=-1.0)
    message = _invalid_graph_error(harness, tiny_checkpoint, method="attend_and_excite",
                                   advanced="max_refinement_steps = 0")
    assert "max_refinement_steps must be ≥ 1" in message and "refine = false" in message


def test_divide_and_bind_without_attributes_is_refused_before_sampling(harness: Any, sd15: tuple) -> None:
    model, clip, _ = sd15
    parse = harness.module("nodes.parse_node")
    config_node = harness.module("nodes.config_node")
    sampler_module = harness.module("guidance.sampler")
    with torch.inference_mode():
        bindings, _ = parse.parse_prompt_bindings(clip, "a cat and a frog")
        positive = harness.node("CLIPTextEncode").encode(clip, "a cat and a frog")[0]
    parts = {"model": model, "bindings": bindings, "positive": positive, "negative": positive}
    assert "No noun has a modifier" in parse.parse_prompt_bindings(clip, "a cat and a frog")[1]
    with pytest.raises(sampler_module.BindingGuidanceError, match="loss_mode = tv"):
        _run(harness, parts, config_node.build_config("divide_and_bind", 20.0, 0.5))
    attendance_only = config_node.build_config("divide_and_bind", 20.0, 0.5, "loss_mode = tv\nrefine = false")
    report = _run(harness, parts, attendance_only)
    assert report.steps


def test_main_factor_in_advanced_moves_the_recorded_level(harness: Any, graph_parts: dict) -> None:
    config_node = harness.module("nodes.config_node")
    config = config_node.build_config("syngen", 20.0, 0.5, "main_factor = 2")
    assert config.main_factor == 2
    report = _run(harness, graph_parts, config)
    assert report.main_factor == 2 and report.last_maps.shape[-2:] == (8, 8)  # 16×16 latent at factor 2
    with pytest.raises(ValueError, match="main_factor must be 1, 2, 4 or 8"):
        config_node.build_config("syngen", 20.0, 0.5, "main_factor = 3")
