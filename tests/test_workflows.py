"""The shipped workflows: UI files match the live node schemas, convert to exactly their API twins, and run.

Schema checks use the node classes ComfyUI loaded (``harness``), built into ``/object_info`` form by the same code
path as the server. Each API twin runs through ComfyUI's real executor on the tiny checkpoint (128×128, 4 steps).
"""

from __future__ import annotations

import copy

import pytest
from workflow_tools import (
    FRONTEND_ONLY,
    PACK_ROOT,
    api_twin_path,
    check_ui_workflow,
    load_json,
    object_info_from_mappings,
    pack_identity,
    patch_for_test,
    ui_to_api,
    ui_workflow_paths,
    widget_layout,
    with_appended_outputs,
)

EXPECTED = {
    "syngen_sd15": "syngen",
    "syngen_entropy_sd15": "syngen_entropy",
    "divide_and_bind_sd15": "divide_and_bind",
    "attend_and_excite_sd15": "attend_and_excite",
    "tsam_sd15": "tsam",
    "syngen_custom_sampler_sd15": "syngen",
}
PAPER_PROMPTS = {
    "syngen_sd15": "a pink sunflower and a yellow flamingo",
    "divide_and_bind_sd15": "a purple dog and a green bench on the street, snowy driving scene",
    "attend_and_excite_sd15": "a cat and a frog",
}
# scripts/demo.py patches workflows/api/syngen_sd15.json by class_type; these ids and types must stay.
SEED_SYNGEN = {"3": "BindingGuidedKSampler", "4": "CheckpointLoaderSimple", "5": "EmptyLatentImage",
               "7": "CLIPTextEncode", "8": "VAEDecode", "9": "SaveImage",
               "10": "ParseBindings", "11": "BindingLossConfig"}
UI_PATHS = ui_workflow_paths()
IDS = [p.stem for p in UI_PATHS]


@pytest.fixture(scope="module")
def object_info(harness) -> dict:
    return object_info_from_mappings(harness.nodes)


@pytest.fixture(scope="module")
def pack_nodes(harness) -> set[str]:
    return set(harness.pack.NODE_CLASS_MAPPINGS)


def test_every_method_has_a_workflow_with_twin_and_thumbnail():
    assert sorted(IDS) == sorted(EXPECTED)
    for path in UI_PATHS:
        assert api_twin_path(path).is_file(), f"{path.name}: no API twin in workflows/api/"
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{path.name}: no thumbnail {thumbnail.name}"
        assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is not a JPEG"
        assert thumbnail.stat().st_size < 100_000, f"{thumbnail.name} is over 100 KB"


@pytest.mark.parametrize("path", UI_PATHS, ids=IDS)
def test_ui_workflow_matches_node_schemas(path, object_info):
    ui = load_json(path)
    assert ui["version"] == 0.4
    assert check_ui_workflow(ui, object_info) == []


@pytest.mark.parametrize("path", UI_PATHS, ids=IDS)
def test_ui_workflow_converts_to_its_api_twin(path, object_info):
    assert ui_to_api(load_json(path), object_info) == load_json(api_twin_path(path)), (
        f"{path.name} and its API twin drifted: run `.venv/bin/python scripts/make_workflows.py --api`")


@pytest.mark.parametrize("path", UI_PATHS, ids=IDS)
def test_ui_workflow_is_documented_and_installable(path, object_info, pack_nodes):
    ui = load_json(path)
    cnr_id, version = pack_identity()
    notes = [n for n in ui["nodes"] if n["type"] in FRONTEND_ONLY]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200, "one Note node explaining the graph"
    types = {n["type"] for n in ui["nodes"]}
    assert set(object_info) | FRONTEND_ONLY >= types
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node.get("title"), f"node {node['id']} ({node['type']}) has no title"
        expected = (cnr_id, version) if node["type"] in pack_nodes else ("comfy-core", "0.3.75")
        assert (node["properties"].get("cnr_id"), node["properties"].get("ver")) == expected, node["type"]
    assert "SaveImage" in types and "PreviewImage" in types | ({"PreviewImage"} if "SamplerCustomAdvanced" in types
                                                                else set())
    config = next(n for n in ui["nodes"] if n["type"] == "BindingLossConfig")
    method = dict(zip([name for name, _ in widget_layout(object_info["BindingLossConfig"])],
                      config["widgets_values"], strict=True))["method"]
    assert method == EXPECTED[path.stem]


@pytest.mark.parametrize("path", UI_PATHS, ids=IDS)
def test_prompt_is_typed_once(path):
    """Parse Bindings' conditioning is the positive input (one prompt box), with the paper's prompt where the method
    has a famous one."""
    api = load_json(api_twin_path(path))
    parse_id = next(k for k, n in api.items() if n["class_type"] == "ParseBindings")
    parse = api[parse_id]
    sampler = next(n for n in api.values() if n["class_type"] in ("BindingGuidedKSampler", "CFGGuider"))
    assert sampler["inputs"]["positive"] == [parse_id, 2]
    encoders = [n for n in api.values() if n["class_type"] == "CLIPTextEncode"]
    assert [n["inputs"]["text"] for n in encoders] == [""], "only the negative prompt has its own box"
    if path.stem in PAPER_PROMPTS:
        assert parse["inputs"]["prompt"] == PAPER_PROMPTS[path.stem]
    if path.stem == "tsam_sd15":
        config = next(n for n in api.values() if n["class_type"] == "BindingLossConfig")["inputs"]
        assert (config["step_size"], config["guided_fraction"]) == (5.0, 0.6)


def test_previews_are_wired_in_ksampler_workflows():
    for path in UI_PATHS:
        api = load_json(api_twin_path(path))
        if not any(n["class_type"] == "BindingGuidedKSampler" for n in api.values()):
            continue
        sampler_id = next(k for k, n in api.items() if n["class_type"] == "BindingGuidedKSampler")
        previewed = {tuple(n["inputs"]["images"]) for n in api.values() if n["class_type"] == "PreviewImage"}
        assert {(sampler_id, 1), (sampler_id, 2)} <= previewed, f"{path.name}: attention_maps/loss_curve not previewed"


def test_seed_api_workflow_keeps_its_ids():
    api = load_json(api_twin_path(UI_PATHS[0].with_name("syngen_sd15.json")))
    assert {k: api[k]["class_type"] for k in SEED_SYNGEN} == SEED_SYNGEN


def test_schema_check_catches_shifted_and_missing_values(object_info):
    """The failure mode of positional widgets_values: a value inserted or lost must not pass silently."""
    ui = load_json(UI_PATHS[0].with_name("syngen_sd15.json"))
    shifted = copy.deepcopy(ui)
    config = next(n for n in shifted["nodes"] if n["type"] == "BindingLossConfig")
    config["widgets_values"].insert(1, "syngen")
    assert any("widget values" in p for p in check_ui_workflow(shifted, object_info))
    swapped = copy.deepcopy(ui)
    sampler = next(n for n in swapped["nodes"] if n["type"] == "BindingGuidedKSampler")
    sampler["widgets_values"][1], sampler["widgets_values"][2] = sampler["widgets_values"][2], "fixed"
    assert any("steps" in p for p in check_ui_workflow(swapped, object_info))
    broken = copy.deepcopy(ui)
    broken["links"].pop()
    problems = check_ui_workflow(broken, object_info)
    assert any("missing link" in p for p in problems)
    with pytest.raises(ValueError, match="missing link"):
        ui_to_api(broken, object_info)


def test_control_after_generate_value_is_not_sent(object_info):
    ui = load_json(UI_PATHS[0].with_name("syngen_sd15.json"))
    sampler = next(n for n in ui["nodes"] if n["type"] == "BindingGuidedKSampler")
    assert sampler["widgets_values"][:2] == [16, "fixed"]
    api = ui_to_api(ui, object_info)
    assert api[str(sampler["id"])]["inputs"]["seed"] == 16
    assert "fixed" not in api[str(sampler["id"])]["inputs"].values()


@pytest.mark.parametrize("path", UI_PATHS, ids=IDS)
def test_api_twin_runs_on_tiny_checkpoint(path, harness, tiny_checkpoint):
    prompt = patch_for_test(load_json(api_twin_path(path)), tiny_checkpoint, size=128, steps=4)
    outputs = harness.run_prompt(prompt)
    save = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    assert len(outputs[save]["images"]) == 1
    for node_id, node in prompt.items():
        if node["class_type"] == "PreviewImage":
            assert outputs[node_id]["images"], f"{node['_meta']['title']} got no image"
        if node["class_type"] == "ParseBindings":
            assert "Parser:" in outputs[node_id]["binding_parse"][0]


TWO_NODE_WORKFLOW = PACK_ROOT / "tests" / "data" / "legacy_workflows" / "syngen_sd15.json"
"""workflows/syngen_sd15.json as shared before the prompt was typed once: CLIP Text Encode + Parse Bindings."""


def test_workflow_shared_before_runs_or_refuses_clearly(harness, object_info, tiny_checkpoint):
    ui = with_appended_outputs(load_json(TWO_NODE_WORKFLOW), object_info)
    prompt = patch_for_test(ui_to_api(ui, object_info), tiny_checkpoint, size=64, steps=2)
    harness.run_prompt(prompt)  # both boxes hold the same text: a correct run
    positive = next(n for n in prompt.values() if n["class_type"] == "CLIPTextEncode" and n["inputs"]["text"])
    positive["inputs"]["text"] = "a red car and a white sheep"  # only the positive box edited
    with pytest.raises(AssertionError, match="Parse Bindings read 'a pink sunflower and a yellow flamingo', but "
                                             "the positive conditioning comes from 'a red car and a white sheep'"):
        harness.run_prompt(prompt)
