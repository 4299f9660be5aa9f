"""workflows/syngen_sd15 through ComfyUI's real executor on the tiny checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import PACK_ROOT

API_WORKFLOW = PACK_ROOT / "workflows" / "api" / "syngen_sd15.json"


def _graph(checkpoint: str, sampler: str = "euler", seed: int = 16, measure: bool = True) -> dict:
    graph = json.loads(API_WORKFLOW.read_text())
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=128, height=128)
        elif node["class_type"] == "BindingGuidedKSampler":
            inputs.update(steps=6, sampler_name=sampler, scheduler="karras", seed=seed)
        elif node["class_type"] == "BindingLossConfig" and measure:
            inputs["advanced"] = "measure_after_step = true"
    return graph


def _plain(graph: dict) -> dict:
    """The same graph with a stock KSampler and the prompt encoded by CLIP Text Encode, minus every node that read an
    output the KSampler lacks."""
    plain = copy.deepcopy(graph)
    for key, node in list(plain.items()):
        if node["class_type"] == "ParseBindings":
            plain[f"{key}_encode"] = {"class_type": "CLIPTextEncode",
                                      "inputs": {"text": node["inputs"]["prompt"], "clip": node["inputs"]["clip"]}}
            for other in plain.values():
                for name, value in other["inputs"].items():
                    if value == [key, 2]:
                        other["inputs"][name] = [f"{key}_encode", 0]
    removed: set[str] = set()
    for key, node in plain.items():
        if node["class_type"] == "BindingGuidedKSampler":
            node["class_type"] = "KSampler"
            node["inputs"].pop("bindings")
            node["inputs"].pop("config")
            sampler_id = key
        elif node["class_type"] in ("ParseBindings", "BindingLossConfig"):
            removed.add(key)
    changed = True
    while changed:
        changed = False
        for key, node in plain.items():
            if key in removed:
                continue
            for value in node["inputs"].values():
                if isinstance(value, list) and (value[0] in removed or (value[0] == sampler_id and value[1] > 0)):
                    removed.add(key)
                    changed = True
                    break
    return {k: v for k, v in plain.items() if k not in removed}


def _set_input(graph: dict, class_type: str, name: str, value: Any) -> None:
    """Set input ``name`` of every ``class_type`` node of the API graph."""
    for node in graph.values():
        if node["class_type"] == class_type:
            node["inputs"][name] = value


def _sampler_id(graph: dict) -> str:
    return next(k for k, n in graph.items() if n["class_type"] == "BindingGuidedKSampler")


def _images(harness: Any, outputs: dict, kind: str = "output") -> list[bytes]:
    """Pixels (RGB bytes) of the images the graph saved (``kind="output"``) or previewed (``"temp"``).

    Pixels, not files: a saved PNG also embeds the graph, which differs between the graphs compared here.
    """
    import folder_paths
    from PIL import Image

    found = []
    for node_output in outputs.values():
        for image in node_output.get("images", []):
            if image.get("type", "output") == kind:
                folder = Path(folder_paths.get_directory_by_type(kind))
                with Image.open(folder / image["subfolder"] / image["filename"]) as picture:
                    found.append(picture.convert("RGB").tobytes())
    return found


def test_syngen_workflow_guides_and_lowers_the_loss(harness: Any, tiny_checkpoint: str) -> None:
    graph = _graph(tiny_checkpoint)
    outputs = harness.run_prompt(graph)
    report = outputs[_sampler_id(graph)]["binding_report"][0]
    steps = report["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]  # first half of 6 steps
    lowered = [s["loss_after_update"] < s["loss_before_update"] for s in steps if s["stepped"]]
    assert lowered and sum(lowered) >= 0.9 * len(lowered), steps
    assert len(_images(harness, outputs)) == 1


def test_same_seed_same_image_and_no_leak_into_plain_ksampler(harness: Any, tiny_checkpoint: str) -> None:
    guided = _graph(tiny_checkpoint, measure=False)
    plain = _plain(guided)
    plain_before = _images(harness, harness.run_prompt(plain))
    first = _images(harness, harness.run_prompt(guided))
    second = _images(harness, harness.run_prompt(guided))
    plain_after = _images(harness, harness.run_prompt(plain))
    assert first == second
    assert plain_before == plain_after
    assert first != plain_before


def test_prompt_without_bindings_samples_exactly_like_ksampler(harness: Any, tiny_checkpoint: str) -> None:
    graph = _graph(tiny_checkpoint, measure=False)
    _set_input(graph, "ParseBindings", "prompt", "a cat and a dog")
    outputs = harness.run_prompt(graph)
    assert outputs[_sampler_id(graph)]["binding_report"][0]["steps"] == []
    assert _images(harness, outputs) == _images(harness, harness.run_prompt(_plain(graph)))


def test_refused_sampler_fails_with_its_message(harness: Any, tiny_checkpoint: str) -> None:
    with pytest.raises(AssertionError, match="uni_pc"):
        harness.run_prompt(_graph(tiny_checkpoint, sampler="uni_pc"))


def test_fast_mode_from_the_config_node_runs_in_the_workflow(harness: Any, tiny_checkpoint: str) -> None:
    """guidance_mode = fast on Binding Loss Config: the run is guided, deterministic and differs from faithful."""
    fast = _graph(tiny_checkpoint, measure=False)
    _set_input(fast, "BindingLossConfig", "guidance_mode", "fast")
    outputs = harness.run_prompt(fast)
    report = outputs[_sampler_id(fast)]["binding_report"][0]
    assert [(s["step"], s["stepped"]) for s in report["steps"]] == [(0, True), (1, True), (2, True)]
    assert all(s["loss_after_update"] is None for s in report["steps"])  # fast mode re-measures nothing
    images = _images(harness, outputs)
    assert images == _images(harness, harness.run_prompt(fast))
    assert images != _images(harness, harness.run_prompt(_graph(tiny_checkpoint, measure=False)))
    assert images != _images(harness, harness.run_prompt(_plain(fast)))


def test_unknown_guidance_mode_is_refused_by_validation(harness: Any, tiny_checkpoint: str) -> None:
    graph = _graph(tiny_checkpoint, measure=False)
    _set_input(graph, "BindingLossConfig", "guidance_mode", "fastest")
    with pytest.raises(AssertionError, match="guidance_mode"):
        harness.run_prompt(graph)
