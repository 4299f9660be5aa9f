"""The user's path, end to end: the real ComfyUI server with the pack in custom_nodes/, the real graph editor
(comfyui-frontend-package) in headless Chromium driven by Playwright, every shipped workflow loaded, checked and run.

Chromium comes from Debian (`apt-get install chromium`; `make setup` does it in CI or as root); Playwright never
downloads a browser. Without Chromium the test is skipped with the reason, except under CI, where it fails.
Screenshots and the editor's own re-serialisation of each workflow go to out/test-artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from devkit.comfy_server import PACK_FOLDER_NAME, ComfyServer
from devkit.tiny_dit_models import STAND_INS, dit_arch, use_tiny_dit
from devkit.workflow_tools import PACK_ROOT, api_twin_path, load_json, patch_for_test, ui_workflow_paths

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = PACK_ROOT / "out" / "test-artifacts" / "browser"
PACK_NODES = ("ParseBindings", "BindingLossConfig", "BindingGuidedKSampler", "BindingGuidedSampler")
UI_PATHS = ui_workflow_paths()
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    # The shipped workflows name the real SD1.5 file; the test swaps in the tiny checkpoint before queueing.
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}


def _require_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    reason = (f"Chromium not found at {CHROMIUM}: install Debian's `chromium` (apt-get install -y chromium; "
              "`make setup` does it when run as root or with CI set)")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from conftest import TEST_CACHE

    work = Path(tempfile.mkdtemp(prefix="bg-server-"))
    with ComfyServer(work, TEST_CACHE) as running:
        for key, value in SETTINGS.items():
            status, _ = running.post_json(f"/api/settings/{key}", value)
            assert status == 200, key
        yield running
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "comfyui-server.log").write_text(running.log_text())
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def page(server):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="bg-chromium-")  # an empty --user-data-dir
    messages: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1800, "height": 1100})
        try:
            tab = context.new_page()
            tab.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            tab.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            tab.goto(server.base_url)
            tab.wait_for_function("() => window.app?.graph && window.app.vueAppReady", timeout=120_000)
            yield tab
        finally:
            context.close()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "console.log").write_text("\n".join(messages))
            shutil.rmtree(profile, ignore_errors=True)


def test_pack_loads_with_tooltips(server):
    log = server.log_text()
    pack_lines = [line for line in log.splitlines() if f"custom_nodes/{PACK_FOLDER_NAME}" in line]
    assert pack_lines, "the pack was not loaded from custom_nodes/"
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line], pack_lines
    categories = set()
    for node in PACK_NODES:
        info = server.get_json(f"/object_info/{node}")[node]
        assert info["description"], node
        categories.add(info["category"])
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
        assert len(info.get("output_tooltips", [])) == len(info["output"]), node
        assert all(name.strip() for name in info["output_name"]), node
    assert len(categories) == 1, categories


def test_help_pages_are_served(server):
    for node in PACK_NODES:
        status, body, _ = server.request(f"/extensions/{PACK_FOLDER_NAME}/docs/{node}.md")
        assert status == 200 and body.startswith(b"# "), node


def test_workflows_are_listed_as_templates(server):
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates[PACK_FOLDER_NAME]) == sorted(p.stem for p in UI_PATHS)
    for path in UI_PATHS:
        status, body, _ = server.request(f"/api/workflow_templates/{PACK_FOLDER_NAME}/{path.name}")
        assert status == 200 and json.loads(body) == load_json(path)
        status, body, _kind = server.request(f"/api/workflow_templates/{PACK_FOLDER_NAME}/{path.stem}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff", path.stem


def _schema_inputs(server, prompt: dict) -> dict:
    """``prompt`` restricted to the inputs the node schemas declare (the editor adds e.g. PreviewAny's text box)."""
    cleaned = {}
    for node_id, node in prompt.items():
        info = server.get_json(f"/object_info/{node['class_type']}")[node["class_type"]]
        declared = {name for section in info["input"].values() for name in section}
        cleaned[node_id] = {**node, "inputs": {k: v for k, v in node["inputs"].items() if k in declared}}
    return cleaned


@pytest.mark.parametrize("path", UI_PATHS, ids=[p.stem for p in UI_PATHS])
def test_workflow_opens_and_runs_in_the_editor(path, server, page, tiny_checkpoint):
    ui = load_json(path)
    twin = load_json(api_twin_path(path))
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [ui, path.stem])

    graph = page.evaluate("""() => {
        const g = window.app.graph;
        const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links);
        return {
            nodes: g.nodes.map(n => ({id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
                                      errors: !!n.has_errors})),
            links: links.map(l => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]),
            saved: JSON.parse(JSON.stringify(g.serialize())),
        };
    }""")
    missing = [n for n in graph["nodes"] if not n["registered"] or n["errors"]]
    assert missing == [], f"missing node types in the editor: {missing}"
    assert sorted((n["id"], n["type"]) for n in graph["nodes"]) == sorted((n["id"], n["type"]) for n in ui["nodes"])
    assert sorted(graph["links"]) == sorted(ui["links"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{path.stem}.editor.json").write_text(json.dumps(graph["saved"], indent=2))
    saved_nodes = {n["id"]: n for n in graph["saved"]["nodes"]}
    for node in ui["nodes"]:  # the editor read every widget value where the file put it, and saves it back alike
        assert saved_nodes[node["id"]].get("widgets_values") == node.get("widgets_values"), node["type"]
        assert saved_nodes[node["id"]]["inputs"] == node["inputs"], node["type"]
        assert saved_nodes[node["id"]]["outputs"] == node["outputs"], node["type"]

    queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert _schema_inputs(server, queued) == twin, "the editor queues something else than the API twin"

    arch = dit_arch(twin)
    if arch:  # the thumbnail shows the shipped loaders; then the tiny Flux.1 / SD3 stand-ins take their place
        page.evaluate("() => window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')")
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))
        page.evaluate(SWAP_NODES_JS, {k: STAND_INS[arch][n["class_type"]] for k, n in twin.items()
                                      if n["class_type"] in STAND_INS[arch]})
        fast = use_tiny_dit(twin)
    else:
        fast = patch_for_test(twin, tiny_checkpoint)
    changes = {node_id: {k: v for k, v in node["inputs"].items() if twin[node_id]["inputs"].get(k) != v}
               for node_id, node in fast.items() if fast[node_id]["class_type"] == twin[node_id]["class_type"]}
    page.evaluate("""(changes) => {
        for (const [id, values] of Object.entries(changes)) {
            const node = window.app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(values)) {
                const widget = node.widgets.find(w => w.name === name);
                widget.value = value;
            }
        }
    }""", changes)
    before = set(server.get_json("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    prompt_id = _wait_for_new_history(server, before)
    entry = server.wait_for_history(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    save_id = next(k for k, n in twin.items() if n["class_type"] == "SaveImage")
    assert entry["outputs"][save_id]["images"]
    image_nodes = [int(k) for k, n in twin.items() if n["class_type"] in ("SaveImage", "PreviewImage")]
    page.wait_for_function(
        "(ids) => ids.every(id => (window.app.graph.getNodeById(id)?.imgs ?? []).length > 0)", arg=image_nodes,
        timeout=60_000)
    page.evaluate("() => window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')")
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{path.stem}{'.run' if arch else ''}.png"))
    preview_ids = [int(k) for k, n in twin.items() if n["class_type"] == "PreviewImage"]
    if preview_ids:  # a close-up of the attention maps and the loss curve, for the README
        box = page.evaluate("""(ids) => {
            const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect();
            const boxes = ids.map(id => window.app.graph.getNodeById(id)).map(n => {
                const [x, y] = n.pos, [w, h] = n.size, title = LiteGraph.NODE_TITLE_HEIGHT;
                return [(x + ds.offset[0]) * ds.scale + rect.left, (y - title + ds.offset[1]) * ds.scale + rect.top,
                        (x + w + ds.offset[0]) * ds.scale + rect.left, (y + h + ds.offset[1]) * ds.scale + rect.top];
            });
            const l = Math.min(...boxes.map(b => b[0])) - 8, t = Math.min(...boxes.map(b => b[1])) - 8;
            const r = Math.max(...boxes.map(b => b[2])) + 8, b = Math.max(...boxes.map(b => b[3])) + 8;
            return {x: Math.max(l, 0), y: Math.max(t, 0), width: r - Math.max(l, 0), height: b - Math.max(t, 0)};
        }""", preview_ids)
        page.screenshot(path=str(ARTIFACTS / f"{path.stem}.previews.png"), clip=box)


SWAP_NODES_JS = """(swaps) => {
    const g = window.app.graph;
    for (const [id, type] of Object.entries(swaps)) {
        const old = g.getNodeById(Number(id));
        const node = LiteGraph.createNode(type);
        node.pos = [...old.pos];
        g.add(node);
        old.outputs.forEach((output, slot) => {
            for (const linkId of [...(output.links ?? [])]) {
                const link = g.links instanceof Map ? g.links.get(linkId) : g.links[linkId];
                node.connect(slot, g.getNodeById(link.target_id), link.target_slot);
            }
        });
        g.remove(old);
    }
}"""
"""Replaces nodes (id → type) in the editor's graph, keeping their outgoing links (stand-in loaders)."""


def _wait_for_new_history(server, before: set[str], timeout: float = 60) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(server.get_json("/history")) - before
        if new:
            return new.pop()
        queue = server.get_json("/queue")
        running = queue["queue_running"] + queue["queue_pending"]
        if running:
            return running[0][1]
        time.sleep(0.3)
    raise AssertionError(f"the editor queued nothing:\n{server.log_tail()}")


TWO_NODE_WORKFLOW = PACK_ROOT / "tests" / "data" / "legacy_workflows" / "syngen_sd15.json"
"""workflows/syngen_sd15.json as shared before the prompt was typed once: CLIP Text Encode + Parse Bindings."""


def _open_for_tiny_run(page, ui: dict, name: str, tiny_checkpoint: str) -> None:
    """Load ``ui`` into the editor and set the widgets patch_for_test changes (tiny checkpoint, size, steps)."""
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [ui, name])
    queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    fast = patch_for_test(queued, tiny_checkpoint, size=64, steps=2)
    changes = {node_id: {k: v for k, v in node["inputs"].items() if queued[node_id]["inputs"].get(k) != v}
               for node_id, node in fast.items()}
    page.evaluate("""(changes) => {
        for (const [id, values] of Object.entries(changes)) {
            const node = window.app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
        }
    }""", changes)
    page.evaluate("() => window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')")
    page.wait_for_timeout(500)


def _type_into(page, node_id: int, widget: str, text: str) -> None:
    """Replace a multiline widget's text the way a user does: in the editor's own text box."""
    handle = page.evaluate_handle("""([id, name]) => {
        const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === name);
        const el = w.element ?? w.inputEl;
        return el.tagName === 'TEXTAREA' ? el : el.querySelector('textarea');
    }""", [node_id, widget])
    box = handle.as_element()
    box.click(force=True)
    box.fill(text, force=True)
    assert page.evaluate("([id, name]) => window.app.graph.getNodeById(id).widgets.find(w => w.name === name).value",
                         [node_id, widget]) == text


def _queue(page, server) -> dict:
    before = set(server.get_json("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    return server.wait_for_history(_wait_for_new_history(server, before))


def test_prompt_typed_once_in_the_editor_reaches_the_sampler(server, page, tiny_checkpoint):
    """Edit the one prompt box (with a dynamic prompt), queue: the sampler guides the new bindings, and the parse
    appears on the Parse Bindings node. Bindings and conditioning come from the same resolved text."""
    path = next(p for p in UI_PATHS if p.stem == "syngen_sd15")
    _open_for_tiny_run(page, load_json(path), path.stem, tiny_checkpoint)
    parse_id = next(n["id"] for n in load_json(path)["nodes"] if n["type"] == "ParseBindings")
    # A text no other test queues: ComfyUI re-sends no output of a node it takes from its cache.
    _type_into(page, parse_id, "prompt", "a {red|blue} bus and a white sheep")
    entry = _queue(page, server)
    assert entry["status"]["status_str"] == "success", entry["status"]
    queued_text = entry["prompt"][2][str(parse_id)]["inputs"]["prompt"]
    assert queued_text in ("a red bus and a white sheep", "a blue bus and a white sheep")  # resolved once
    colour = queued_text.split()[1]
    sampler_id = next(k for k, n in entry["prompt"][2].items() if n["class_type"] == "BindingGuidedKSampler")
    report = entry["outputs"][sampler_id]["binding_report"][0]
    assert [(b["noun"], b["modifiers"]) for b in report["bindings"]] == [("bus", [colour]), ("sheep", ["white"])]
    shown = page.wait_for_function("""(id) => {
        const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === 'parse_result');
        return w && w.value.includes('bus:') ? w.value : null;
    }""", arg=parse_id, timeout=30_000).json_value()
    assert f"bus: {colour}" in shown and "sheep: white" in shown
    saved = page.evaluate("(id) => window.app.graph.getNodeById(id).serialize().widgets_values", parse_id)
    assert saved[0] == "a {red|blue} bus and a white sheep" and len(saved) == 4  # the parse box is never saved
    page.screenshot(path=str(ARTIFACTS / "prompt_typed_once.png"))


def test_two_node_workflow_with_an_edited_positive_shows_the_mismatch(server, page, tiny_checkpoint):
    """A workflow shared before the one-box form: edit only the positive prompt, queue, read the error in the UI."""
    ui = load_json(TWO_NODE_WORKFLOW)
    _open_for_tiny_run(page, ui, "two_node", tiny_checkpoint)
    positive_id = next(n["id"] for n in ui["nodes"] if n["type"] == "CLIPTextEncode" and n["widgets_values"][0])
    _type_into(page, positive_id, "text", "a red car and a white sheep")
    entry = _queue(page, server)
    assert entry["status"]["status_str"] == "error"
    expected = ("Parse Bindings read 'a pink sunflower and a yellow flamingo', but the positive conditioning comes "
                "from 'a red car and a white sheep'")
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and expected in errors[0]["exception_message"]
    page.wait_for_function("(text) => document.body.innerText.includes(text)", arg=expected, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "two_node_mismatch.png"))
    page.keyboard.press("Escape")  # close the error dialog for whatever runs next
