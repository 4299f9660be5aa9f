"""Workflow files: UI ("workflow") format ↔ API ("prompt") format, checked against ComfyUI node schemas.

``object_info`` is what ComfyUI serves at ``/object_info``: ``{node_type: {"input": {...}, "input_order": {...},
"output": [...], "output_name": [...], ...}}``. It comes from a live server (:func:`fetch_object_info`) or, without
a server, from the loaded node classes (:func:`object_info_from_mappings`, the same code path as the server's).

The UI format is the one the graph editor saves (schema 0.4): ``nodes`` with positional ``widgets_values`` and
``links`` as ``[link_id, origin_id, origin_slot, target_id, target_slot, type]``. Pure Python, no ComfyUI import.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = PACK_ROOT / "workflows"
API_DIR = WORKFLOW_DIR / "api"

# Widget types the frontend draws for a plain input spec ``[type, options]`` (a list type is a combo).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes that exist only in the editor: they are dropped from the API prompt.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
# Editor-only node types this converter refuses (they rewrite links/values in the editor, not on the server).
UNSUPPORTED = {"Reroute", "PrimitiveNode"}
# Widgets the editor adds on its own (never sent to the server), and how many values they store.
FRONTEND_WIDGETS: dict[str, int] = {}
NODE_KEYS = ("id", "type", "pos", "size", "flags", "order", "mode", "properties")


def pack_identity() -> tuple[str, str]:
    """(cnr_id, ver) of this pack, from pyproject.toml: what pack nodes' ``properties`` must carry."""
    import tomllib

    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["project"]
    return project["name"], project["version"]


# ---------------------------------------------------------------------------------------------------------------
# object_info


def node_info(node_type: str, cls: Any, display_name: str | None = None) -> dict:
    """The ``/object_info`` entry of one node class, as ComfyUI's server builds it (V1 and V3 nodes)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        info = cls.GET_NODE_INFO_V1()
    else:
        inputs = cls.INPUT_TYPES()
        info = {
            "input": inputs,
            "input_order": {key: list(value.keys()) for key, value in inputs.items()},
            "output": cls.RETURN_TYPES,
            "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
            "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
            "name": node_type,
            "display_name": display_name or node_type,
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    return json.loads(json.dumps(info, default=str))  # tuples → lists, exactly as the server sends them


def object_info_from_mappings(nodes_module: Any, names: Iterable[str] | None = None) -> dict[str, dict]:
    """``/object_info`` for the given node types (all by default) from ComfyUI's loaded ``nodes`` module."""
    mappings = nodes_module.NODE_CLASS_MAPPINGS
    display = nodes_module.NODE_DISPLAY_NAME_MAPPINGS
    return {name: node_info(name, mappings[name], display.get(name)) for name in (names or mappings)}


def fetch_object_info(base_url: str) -> dict[str, dict]:
    """``/object_info`` from a running server."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/object_info", timeout=60) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------------------------------------------------
# Schema helpers


def input_specs(info: dict) -> list[tuple[str, list, bool]]:
    """``(name, spec, required)`` for every declared input, in the schema's order (required, then optional)."""
    result = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        order = info.get("input_order", {}).get(section, list(specs))
        result += [(name, specs[name], section == "required") for name in order]
    return result


def is_widget(spec: list) -> bool:
    """Whether the editor draws this input as a widget (a value stored in ``widgets_values``)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput") or options.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_layout(info: dict) -> list[tuple[str, bool]]:
    """``(input_name, has_control_after_generate)`` for each widget input, in ``widgets_values`` order."""
    layout = []
    for name, spec, _required in input_specs(info):
        if is_widget(spec):
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            layout.append((name, bool(options.get("control_after_generate"))))
    return layout


def widget_value_count(info: dict) -> int:
    return sum(2 if control else 1 for _name, control in widget_layout(info))


def widgets_by_name(node: dict, info: dict) -> dict[str, Any]:
    """Map a UI node's positional ``widgets_values`` to input names, skipping control_after_generate values."""
    values = node.get("widgets_values", [])
    if isinstance(values, dict):
        return {name: values[name] for name, _control in widget_layout(info) if name in values}
    named: dict[str, Any] = {}
    position = 0
    for name, control in widget_layout(info):
        if position >= len(values):
            break
        named[name] = values[position]
        position += 2 if control else 1
    return named


# ---------------------------------------------------------------------------------------------------------------
# Checks and conversion


def check_ui_workflow(ui: dict, object_info: dict) -> list[str]:
    """Problems that would stop the editor loading ``ui`` or the server running it; empty when it is sound."""
    problems: list[str] = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        if key not in ui:
            problems.append(f"missing top-level key '{key}'")
    if problems:
        return problems
    nodes = {}
    for node in ui["nodes"]:
        missing = [k for k in NODE_KEYS if k not in node]
        if missing:
            problems.append(f"node {node.get('id')}: missing keys {missing}")
            continue
        if node["id"] in nodes:
            problems.append(f"node id {node['id']} is used twice")
        nodes[node["id"]] = node
    if nodes and max(nodes) > ui["last_node_id"]:
        problems.append(f"last_node_id {ui['last_node_id']} < largest node id {max(nodes)}")
    links = {}
    for link in ui["links"]:
        if not (isinstance(link, list) and len(link) == 6):
            problems.append(f"link {link!r} is not [id, origin, origin_slot, target, target_slot, type]")
            continue
        if link[0] in links:
            problems.append(f"link id {link[0]} is used twice")
        links[link[0]] = link
    if links and max(links) > ui["last_link_id"]:
        problems.append(f"last_link_id {ui['last_link_id']} < largest link id {max(links)}")

    for node in nodes.values():
        kind = node["type"]
        where = f"node {node['id']} ({kind})"
        if kind in UNSUPPORTED:
            problems.append(f"{where}: editor-only node type this pack's workflows do not use")
            continue
        if kind in FRONTEND_ONLY:
            continue
        info = object_info.get(kind)
        if info is None:
            problems.append(f"{where}: unknown node type")
            continue
        values = node.get("widgets_values", [])
        expected = widget_value_count(info) + FRONTEND_WIDGETS.get(kind, 0)
        if not isinstance(values, list) or len(values) != expected:
            problems.append(f"{where}: {len(values)} widget values, schema wants {expected} "
                            f"({[n for n, _ in widget_layout(info)]})")
        else:
            problems += _check_widget_values(where, node, info)
        specs = {name: spec for name, spec, _ in input_specs(info)}
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry["name"] not in specs:
                problems.append(f"{where}: input '{entry['name']}' is not in the schema")
            link_id = entry.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                problems.append(f"{where}: input '{entry['name']}' names missing link {link_id}")
            elif (link[3], link[4]) != (node["id"], slot):
                problems.append(f"{where}: link {link_id} targets {link[3]}:{link[4]}, not {node['id']}:{slot}")
        connected = {e["name"] for e in node.get("inputs", []) if e.get("link") is not None}
        widget_names = {name for name, _ in widget_layout(info)}
        for name, _spec, required in input_specs(info):
            if required and name not in widget_names and name not in connected:
                problems.append(f"{where}: required input '{name}' is not connected")
        outputs = node.get("outputs", [])
        if len(outputs) != len(info["output"]):
            problems.append(f"{where}: {len(outputs)} outputs, schema has {len(info['output'])}")
        for slot, entry in enumerate(outputs[: len(info["output"])]):
            if entry.get("type") != info["output"][slot] and info["output"][slot] != "*":
                problems.append(f"{where}: output {slot} type {entry.get('type')} != {info['output'][slot]}")
            for link_id in entry.get("links") or []:
                link = links.get(link_id)
                if link is None or (link[1], link[2]) != (node["id"], slot):
                    problems.append(f"{where}: output {slot} lists link {link_id}, which does not start there")

    for link in links.values():
        link_id, origin, origin_slot, target, target_slot, _kind = link
        if origin not in nodes or target not in nodes:
            problems.append(f"link {link_id}: endpoint node missing")
            continue
        target_inputs = nodes[target].get("inputs", [])
        if target_slot >= len(target_inputs) or target_inputs[target_slot].get("link") != link_id:
            problems.append(f"link {link_id}: target {target}:{target_slot} does not reference it")
        origin_outputs = nodes[origin].get("outputs", [])
        if origin_slot >= len(origin_outputs) or link_id not in (origin_outputs[origin_slot].get("links") or []):
            problems.append(f"link {link_id}: origin {origin}:{origin_slot} does not list it")
    return problems


def _check_widget_values(where: str, node: dict, info: dict) -> list[str]:
    problems = []
    specs = {name: spec for name, spec, _ in input_specs(info)}
    for name, value in widgets_by_name(node, info).items():
        spec = specs[name]
        kind = spec[0]
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
        if choices is not None:
            if value not in choices and name != "ckpt_name":  # model files differ per machine
                problems.append(f"{where}: {name}={value!r} is not one of {choices}")
        elif kind in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{where}: {name}={value!r} is not a number")
            elif not options.get("min", value) <= value <= options.get("max", value):
                problems.append(f"{where}: {name}={value!r} is outside [{options.get('min')}, {options.get('max')}]")
        elif kind == "STRING" and not isinstance(value, str):
            problems.append(f"{where}: {name}={value!r} is not text")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            problems.append(f"{where}: {name}={value!r} is not a boolean")
    return problems


def ui_to_api(ui: dict, object_info: dict) -> dict[str, dict]:
    """The API prompt the editor would queue for ``ui``: editor-only nodes dropped, muted/bypassed nodes refused."""
    problems = check_ui_workflow(ui, object_info)
    if problems:
        raise ValueError("workflow does not match the node schemas:\n" + "\n".join(problems))
    links = {link[0]: link for link in ui["links"]}
    prompt: dict[str, dict] = {}
    for node in sorted(ui["nodes"], key=lambda n: n["order"]):
        if node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; ship workflows without that")
        info = object_info[node["type"]]
        named = widgets_by_name(node, info)
        connected = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                connected[entry["name"]] = [str(link[1]), link[2]]
        inputs: dict[str, Any] = {}
        for name, _spec, _required in input_specs(info):
            if name in connected:
                inputs[name] = connected[name]
            elif name in named:
                inputs[name] = named[name]
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Files


def ui_workflow_paths() -> list[Path]:
    """Every shipped UI workflow (``workflows/*.json``, not ``index.json``)."""
    return sorted(p for p in WORKFLOW_DIR.glob("*.json") if p.name != "index.json")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def api_twin_path(ui_path: Path) -> Path:
    return API_DIR / ui_path.name


# Test-only caps on the refinement loops (a random tiny model never meets the papers' thresholds, so the
# loops would run to their full iteration counts): the code paths still run, a few iterations long.
FAST_ADVANCED = {
    "attend_and_excite": "max_refinement_steps = 1",
    "divide_and_bind": "refine = false",
    "tsam": "refinement_iterations = 2\nbreak_iteration = 1",
}


def with_appended_outputs(ui: dict, object_info: dict) -> dict:
    """``ui`` as the editor loads it: outputs a node's schema appended since the file was saved are added, unlinked
    (an appended output keeps every saved link valid)."""
    for node in ui["nodes"]:
        info = object_info.get(node["type"])
        if info is None or "outputs" not in node:
            continue
        for name, kind in list(zip(info["output_name"], info["output"], strict=True))[len(node["outputs"]):]:
            node["outputs"].append({"localized_name": name, "name": name, "type": kind, "links": []})
    return ui


def patch_for_test(prompt: dict, ckpt_name: str, size: int = 128, steps: int = 4) -> dict:
    """A copy of an API prompt that runs in seconds on the tiny test checkpoint (patched by class_type)."""
    patched = json.loads(json.dumps(prompt))
    for node in patched.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        elif kind == "EmptyLatentImage":
            inputs.update(width=size, height=size, batch_size=1)
        elif kind == "BindingLossConfig" and not inputs.get("advanced") and inputs["method"] in FAST_ADVANCED:
            inputs["advanced"] = FAST_ADVANCED[inputs["method"]]
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
    return patched



def is_pack_node(info: dict) -> bool:
    """Whether an ``/object_info`` entry comes from a custom node pack (not core)."""
    return str(info.get("python_module", "")).startswith("custom_nodes")
