"""Binding Loss Config and Binding Guidance Options: settings typed once, checked by ComfyUI's real validation,
chained configs, workflows saved before the options node, and help pages generated from the declarations."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from devkit.workflow_tools import (
    check_ui_workflow,
    object_info_from_mappings,
    patch_for_test,
    ui_to_api,
    with_appended_outputs,
)
from PIL import Image

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_workflows"
LEGACY_UI = sorted(LEGACY.glob("*.json"))
SAMPLER_KEYS = {
    "main_factor": "2",
    "stop_below": "1000",
    "guidance_attention": "comfy",
    "cpu_convolution": "native",
    "measure_after_step": "true",
}


@pytest.fixture(scope="module")
def config_node(harness: Any) -> Any:
    return harness.module("nodes.config_node")


def _declarations(harness: Any) -> list[tuple[str, Any]]:
    objectives = harness.module("binding_losses.objectives")
    settings = harness.module("settings")
    inputs = harness.module("guidance.inputs")
    found = [(method, item) for method in sorted(objectives.METHODS)
             for item in objectives.method_settings(method).values()]
    for owner in (inputs.GuidanceConfig, objectives.ChainTerm):
        found += [(owner.__name__, item) for item in settings.declared_settings(owner).values()]
    return found


def _legacy_graph(name: str, tiny_checkpoint: str, **config_inputs: Any) -> dict:
    graph = patch_for_test(json.loads((LEGACY / "api" / f"{name}.json").read_text()), tiny_checkpoint)
    graph["11"]["inputs"].update(config_inputs)
    return graph


def _node_errors(graph: dict) -> dict:
    import execution

    return asyncio.run(execution.validate_prompt("settings-test", graph, None))[3]


def test_every_setting_declares_its_range_or_choices(harness: Any) -> None:
    declarations = _declarations(harness)
    assert len(declarations) > 40
    for owner, item in declarations:
        declared = item.declaration
        assert item.doc, (owner, item.name)
        if item.kind is str:
            assert declared.choices or declared.check, (owner, item.name)
        elif item.kind is not bool:
            assert declared.bounds is not None or declared.choices is not None, (owner, item.name)


def test_no_hyperparameter_accepts_nan_inf_or_huge_values_in_advanced(config_node: Any, harness: Any) -> None:
    numeric = {(owner, item.name) for owner, item in _declarations(harness)
               if item.kind not in (bool, str) and owner not in ("GuidanceConfig", "ChainTerm")}
    assert {("syngen", "scale_factor"), ("divide_and_bind", "softmax_scale"), ("tsam", "power")} <= numeric
    for _owner, key in sorted(numeric):
        for value in ("nan", "inf", "-inf", "1e30"):
            text = f"{key} = {value}" if key not in ("thresholds", "bind_weights") else f"{key} = 0.1, {value}, 0.2"
            with pytest.raises(ValueError) as refused:
                config_node.check_advanced(text)
            message = str(refused.value)
            assert message.startswith(f"{key} must be ") and value in message and "(default " in message, message


def test_advanced_cannot_bypass_the_widget_ranges(config_node: Any) -> None:
    step_size = config_node.BindingLossConfig.INPUT_TYPES()["required"]["step_size"][1]
    assert (step_size["min"], step_size["max"]) == (0.0, 1000.0)
    with pytest.raises(ValueError, match=r"scale_factor must be ≥ 0 and ≤ 1000, got 1000.5 \(default 20.0\)"):
        config_node.check_advanced("scale_factor = 1000.5")
    with pytest.raises(ValueError, match=r"scale_factor must be ≥ 0 and ≤ 1000, got 1000.5"):
        config_node.build_config("syngen", 20.0, 0.5, "scale_factor = 1000.5")
    with pytest.raises(ValueError, match="weight must be ≥ 0 and ≤ 100, got inf"):
        config_node.build_config("syngen", 20.0, 0.5, weight=math.inf)


@pytest.mark.parametrize("method", ["syngen", "tsam"])
def test_a_nan_widget_value_is_refused_under_the_widget_name(config_node: Any, method: str) -> None:
    """A NaN sent through /prompt passes ComfyUI's min/max check; the run-time refusal names the widget the user
    sees (``step_size``), not the hyperparameter behind it (``scale_factor``). It is not refused at validation:
    ComfyUI flags every argument of a failing VALIDATE_INPUTS, which already takes ``advanced``."""
    with pytest.raises(ValueError, match=r"\): step_size must be ≥ 0 and ≤ 1000, got nan") as refused:
        config_node.BindingLossConfig().configure(method, math.nan, 0.5, "", 1.0)
    assert "scale_factor" not in str(refused.value)
    with pytest.raises(ValueError, match=r"\): guided_fraction must be .*, got inf"):
        config_node.BindingLossConfig().configure(method, 20.0, math.inf, "", 1.0)
    with pytest.raises(ValueError, match=r"\): step_size must be ≥ 0 and ≤ 1000, got 1000.5"):
        config_node.build_config(method, 1000.5, 0.5, "scale_factor = 10")  # the widget is checked even if overridden


def test_advanced_keys_reach_the_objective_with_their_declared_defaults(config_node: Any) -> None:
    """Only the keys given are passed on, so defaults that depend on another key resolve (D&B's max thresholds)."""
    maximum = config_node.build_config("divide_and_bind", 20.0, 0.5, "loss_mode = max").objective.terms[0][1]
    assert maximum.thresholds == (0.05, 0.5, 0.8) and maximum.loss_mode == "max"
    paper = config_node.build_config("tsam", 10.0, 0.5, "loss_type = paper").objective.terms[0][1]
    assert (paper.scale_factor, paper.guided_fraction, paper.loss_type) == (10.0, 0.5, "paper")


def test_a_key_of_another_method_is_refused_when_the_node_runs(config_node: Any) -> None:
    config_node.check_advanced("tv_variant = fixed")  # some method has it: validation cannot know the method
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['tv_variant'\] for method 'syngen'"):
        config_node.build_config("syngen", 20.0, 0.5, "tv_variant = fixed")
    with pytest.raises(ValueError, match=r"unknown parameter 'tv_varient'; valid parameters: .*'tv_variant'"):
        config_node.check_advanced("tv_varient = fixed")


def test_chained_configs_inherit_sampler_settings_and_an_options_node_replaces_them(
    config_node: Any, harness: Any
) -> None:
    inputs = harness.module("guidance.inputs")
    first = config_node.build_config("syngen", 20.0, 0.5, "main_factor = 2\ncpu_convolution = default")
    second = config_node.build_config("attend_and_excite", 20.0, 0.5, previous=first, guidance_mode="fast",
                                      words="cat")
    assert (second.main_factor, second.cpu_convolution, second.mode) == (2, "default", "fast")
    assert second.subject_words == ("cat",) and second.description == "1×syngen + 1×attend_and_excite"
    options = config_node.BindingGuidanceOptions().configure(
        main_factor="8", stop_below=0.0, guidance_attention="sdpa", cpu_convolution="auto", measure_after_step=True
    )[0]
    expected = inputs.GuidanceOptions(main_factor=8, cpu_convolution="auto", measure_after_step=True)
    assert options == expected and options.stop_below is None
    third = config_node.build_config("tsam", 5.0, 0.6, previous=second, options=options)
    assert (third.main_factor, third.cpu_convolution, third.measure_after_step, third.mode) == (8, "auto", True,
                                                                                              "faithful")
    assert third.subject_words == ("cat",) and len(third.objective.terms) == 3
    with pytest.raises(ValueError, match=r"advanced sets \['stop_below'\].*Binding Guidance Options"):
        config_node.build_config("syngen", 20.0, 0.5, "stop_below = 1", options=options)


def test_bad_advanced_values_are_flagged_under_advanced_only(harness: Any, tiny_checkpoint: str) -> None:
    cases = {
        "scale_factor = inf": ("syngen", "scale_factor must be ≥ 0 and ≤ 1000, got inf (default 20.0)"),
        "scale_factor = 1e30": ("syngen", "scale_factor must be ≥ 0 and ≤ 1000, got 1e30 (default 20.0)"),
        "scale_factor = nan": ("tsam", "scale_factor must be ≥ 0 and ≤ 1000, got nan (default 20.0)"),
        "softmax_scale = nan": ("divide_and_bind", "softmax_scale must be > 0 and ≤ 1000, got nan (default 100.0)"),
        "main_factor = 3": ("syngen", "main_factor must be 1, 2, 4 or 8, got 3 (default 4)"),
    }
    for advanced, (method, expected) in cases.items():
        errors = _node_errors(_legacy_graph("syngen_sd15", tiny_checkpoint, method=method, advanced=advanced))
        flagged = errors["11"]["errors"]
        assert [error["extra_info"]["input_name"] for error in flagged] == ["advanced"], flagged
        assert expected in flagged[0]["details"], flagged[0]["details"]
    unknown_method = _node_errors(_legacy_graph("syngen_sd15", tiny_checkpoint, method="nope"))["11"]["errors"]
    assert [error["extra_info"]["input_name"] for error in unknown_method] == ["method"]
    assert _node_errors(_legacy_graph("syngen_sd15", tiny_checkpoint, advanced="refine = false\nsmooth = true")) == {}


def test_a_nan_stop_below_is_flagged_on_the_options_node_only(harness: Any, tiny_checkpoint: str) -> None:
    graph = _legacy_graph("syngen_sd15", tiny_checkpoint, options=["12", 0])
    widgets = {**SAMPLER_KEYS, "stop_below": math.nan, "measure_after_step": False}
    graph["12"] = {"class_type": "BindingGuidanceOptions", "inputs": widgets}
    errors = _node_errors(graph)
    assert list(errors) == ["12"]
    assert [error["extra_info"]["input_name"] for error in errors["12"]["errors"]] == ["stop_below"]
    assert "stop_below must be ≥ 0 and ≤ 1e+09; 0 = off, got nan (default none)" in errors["12"]["errors"][0]["details"]
    graph["12"]["inputs"]["stop_below"] = 2e9  # still refused without ComfyUI's own max check
    assert [e["extra_info"]["input_name"] for e in _node_errors(graph)["12"]["errors"]] == ["stop_below"]
    graph["12"]["inputs"].update(stop_below=0.5, main_factor="3")
    assert [e["type"] for e in _node_errors(graph)["12"]["errors"]] == ["value_not_in_list"]


@pytest.mark.parametrize("path", LEGACY_UI, ids=[p.stem for p in LEGACY_UI])
def test_workflows_saved_before_the_change_still_load_and_validate(
    path: Path, harness: Any, tiny_checkpoint: str
) -> None:
    object_info = object_info_from_mappings(harness.nodes)
    ui = with_appended_outputs(json.loads(path.read_text()), object_info)  # Parse Bindings gained 'conditioning'
    assert check_ui_workflow(ui, object_info) == []
    twin = json.loads((LEGACY / "api" / path.name).read_text())
    assert ui_to_api(ui, object_info) == twin  # old widgets_values map onto the same inputs as before
    assert _node_errors(patch_for_test(twin, tiny_checkpoint)) == {}


def _saved_pixels(harness: Any, outputs: dict) -> np.ndarray:
    image = next(item for node in outputs.values() for item in node.get("images", []) if item["type"] == "output")
    return np.asarray(Image.open(harness.output_dir / image["subfolder"] / image["filename"]))


def test_sampler_keys_in_advanced_mean_what_the_options_node_means(
    harness: Any, tiny_checkpoint: str, config_node: Any
) -> None:
    legacy = _legacy_graph("syngen_sd15", tiny_checkpoint,
                           advanced="\n".join(f"{key} = {value}" for key, value in SAMPLER_KEYS.items()))
    typed = _legacy_graph("syngen_sd15", tiny_checkpoint, options=["12", 0])
    widgets = {**SAMPLER_KEYS, "stop_below": 1000.0, "measure_after_step": True}
    typed["12"] = {"class_type": "BindingGuidanceOptions", "inputs": widgets}
    old = config_node.BindingLossConfig().configure(**legacy["11"]["inputs"])[0]
    options = config_node.BindingGuidanceOptions().configure(**widgets)[0]
    new = config_node.BindingLossConfig().configure(**{**typed["11"]["inputs"], "options": options})[0]
    assert old.options() == new.options() == options
    assert (old.main_factor, old.stop_below, old.guidance_attention, old.measure_after_step) == (2, 1000.0, "comfy",
                                                                                              True)
    assert np.array_equal(_saved_pixels(harness, harness.run_prompt(legacy)),
                          _saved_pixels(harness, harness.run_prompt(typed)))


def test_help_pages_match_the_declarations(harness: Any, config_node: Any) -> None:
    from devkit.comfy_env import PACK_ROOT

    fill_tables = harness.module("settings").fill_tables
    tables = config_node.help_tables()
    for name in ("BindingLossConfig.md", "BindingGuidanceOptions.md"):
        page = (PACK_ROOT / "web" / "docs" / name).read_text(encoding="utf-8")
        assert fill_tables(page, tables) == page, f"{name} is stale: run scripts/make_help_pages.py"
    assert "1×" not in tables["widgets"] and "| `step_size` | number | ≥ 0 and ≤ 1000 | `20.0` |" in tables["widgets"]
