"""Write the example workflows: UI files (workflows/*.json) from the specs below, API twins from the UI files.

    .venv/bin/python scripts/make_workflows.py          # rebuild UI files and API twins
    .venv/bin/python scripts/make_workflows.py --api    # only regenerate workflows/api/*.json from the UI files

Widget values are given by input name here and laid out by the live node schemas (ComfyUI + this pack loaded
through ComfyUI's own loader), so a schema change shows up as a regenerated diff, never a silent shift.
tests/test_workflows.py checks that every UI file converts to exactly its API twin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path

from devkit.workflow_tools import (
    API_DIR,
    WORKFLOW_DIR,
    input_specs,
    is_widget,
    load_json,
    pack_identity,
    ui_to_api,
    ui_workflow_paths,
    widget_layout,
)

ROOT = Path(__file__).resolve().parent.parent

COMFY_VERSION = "0.3.75"
FRONTEND_VERSION = "1.32.9"
SD15 = "v1-5-pruned-emaonly.safetensors"
SD15_MODEL = {
    "name": SD15,
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly.safetensors",
    "directory": "checkpoints",
}
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}

# Per-method settings: reference prompt, step size, guided fraction, and a line for the note.
METHODS = {
    "syngen": dict(
        prompt="a pink sunflower and a yellow flamingo", step_size=20.0, guided_fraction=0.5,
        about="SynGen (Rassin et al., NeurIPS 2023): pulls each modifier's attention map onto its noun's map and "
              "pushes it away from the other words' maps."),
    "syngen_entropy": dict(
        prompt="a red backpack and a blue book", step_size=20.0, guided_fraction=0.5,
        about="SynGen with entropy terms: as SynGen, plus a term that keeps every noun's attention map focused "
              "(low entropy), which helps when an object disappears."),
    "divide_and_bind": dict(
        prompt="a purple dog and a green bench on the street, snowy driving scene", step_size=20.0,
        guided_fraction=0.5,
        about="Divide & Bind (Li et al., BMVC 2023): a total-variation 'attendance' term makes every noun appear, "
              "and a Jensen-Shannon 'binding' term ties each modifier to its noun."),
    "attend_and_excite": dict(
        prompt="a cat and a frog", step_size=20.0, guided_fraction=0.5,
        about="Attend-and-Excite (Chefer et al., SIGGRAPH 2023): raises the weakest noun's peak attention so no "
              "subject is neglected, with extra refinement iterations at set steps. It uses the nouns only."),
    "tsam": dict(
        prompt="a red car and a white sheep", step_size=5.0, guided_fraction=0.6,
        about="T-SAM (self-attention-map guidance): aligns the text encoder's own self-attention between each "
              "modifier and its noun with the UNet's cross-attention. Reference: step size 5, first 60% of steps."),
}

COMMON_NOTE = (
    "How to use: type your prompt once, in 'Prompt (Parse Bindings)'. It encodes the prompt for the sampler's "
    "positive input, exactly as CLIP Text Encode would, and finds which words describe which noun. Run once and read "
    "the parse shown on that node: every describing word should sit under its noun; if not, write the bindings in "
    "'override'. "
    "The guided sampler nudges the latent during the first guided steps so each modifier's cross-attention map "
    "lands on its noun. 'Attention maps' shows noun and modifier maps per binding at the last guided step; "
    "'Loss curve' shows the binding loss over the guided steps (it should fall). "
    "Needs an SD1.x checkpoint (v1-5-pruned-emaonly.safetensors); SD2.x and SDXL work too. Guidance costs about "
    "one extra UNet forward and backward pass per guided step."
)


def _node(node_id: int, kind: str, pos: tuple[int, int], size: tuple[int, int], title: str | None = None,
          widgets: dict | None = None, inputs: dict | None = None) -> dict:
    return {"id": node_id, "type": kind, "pos": list(pos), "size": list(size), "title": title,
            "widgets": widgets or {}, "links_in": inputs or {}}


def _sd15_loader() -> dict:
    return _node(4, "CheckpointLoaderSimple", (30, 330), (330, 98), "Load Checkpoint (SD1.5)", {"ckpt_name": SD15})


def _prompt_nodes(method: str, clip: tuple[int, int], negative_box: tuple[tuple[int, int], tuple[int, int]],
                  negative_title: str = "Negative prompt") -> list[dict]:
    """Parse Bindings with the method's reference prompt, the empty negative prompt, and the method's config."""
    spec = METHODS[method]
    return [
        _node(10, "ParseBindings", (420, 40), (400, 340), "Prompt (Parse Bindings)",
              {"prompt": spec["prompt"], "mode": "robust", "spacy_model": "en_core_web_sm", "override": ""},
              {"clip": clip}),
        _node(7, "CLIPTextEncode", *negative_box, negative_title, {"text": ""}, {"clip": clip}),
        _node(11, "BindingLossConfig", (420, 700), (400, 260), f"Binding Loss Config ({method})",
              {"method": method, "step_size": spec["step_size"], "guided_fraction": spec["guided_fraction"],
               "advanced": "", "weight": 1.0, "words": "", "guidance_mode": "faithful"}),
    ]


def _ksampler_nodes(name: str, sampler: dict, links: dict) -> list[dict]:
    """Binding-Guided KSampler → decode/save, plus its attention-map and loss-curve previews. ``links`` names where
    the model, vae and positive conditioning come from; ``sampler`` holds the sampler's other widgets."""
    return [
        _node(3, "BindingGuidedKSampler", (880, 40), (340, 330), "Binding-Guided KSampler",
              {"seed": 16, "denoise": 1.0, **sampler},
              {"model": links["model"], "positive": links["positive"], "negative": (7, 0), "latent_image": (5, 0),
               "bindings": (10, 0), "config": (11, 0)}),
        _node(8, "VAEDecode", (1270, 40), (210, 46), "VAE Decode", {}, {"samples": (3, 0), "vae": links["vae"]}),
        _node(9, "SaveImage", (1520, 40), (420, 460), "Save Image", {"filename_prefix": f"binding_guidance/{name}"},
              {"images": (8, 0)}),
        _node(12, "PreviewImage", (880, 420), (340, 300), "Attention maps", {}, {"images": (3, 1)}),
        _node(13, "PreviewImage", (1270, 540), (340, 300), "Loss curve", {}, {"images": (3, 2)}),
    ]


def _note(text: str) -> dict:
    return _node(15, "Note", (30, 40), (360, 260), "About this workflow", {"text": text})


def standard_graph(method: str) -> tuple[list[dict], str]:
    """Checkpoint → Parse Bindings (the prompt, typed once) + negative encode + Binding Loss Config →
    Binding-Guided KSampler → decode/save."""
    spec = METHODS[method]
    nodes = [
        _sd15_loader(),
        *_prompt_nodes(method, (4, 1), ((420, 420), (400, 120))),
        _node(5, "EmptyLatentImage", (420, 1000), (400, 106), "Empty Latent Image",
              {"width": 512, "height": 512, "batch_size": 1}),
        *_ksampler_nodes(method, {"steps": 50, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "normal"},
                         {"model": (4, 0), "positive": (10, 2), "vae": (4, 2)}),
    ]
    note = f"{spec['about']}\n\nPrompt (from the paper's examples): \"{spec['prompt']}\".\n\n{COMMON_NOTE}"
    nodes.append(_note(note))
    return nodes, f"Binding Guidance: {method}"


def custom_sampler_graph() -> tuple[list[dict], str]:
    """KSamplerSelect → Binding-Guided Sampler → SamplerCustomAdvanced (any guider, scheduler and noise)."""
    prompt = METHODS["syngen"]["prompt"]
    nodes = [
        _sd15_loader(),
        *_prompt_nodes("syngen", (4, 1), ((420, 420), (400, 120))),
        _node(5, "EmptyLatentImage", (420, 1000), (400, 106), "Empty Latent Image",
              {"width": 512, "height": 512, "batch_size": 1}),
        _node(20, "KSamplerSelect", (880, 40), (320, 58), "Sampler", {"sampler_name": "ddim"}),
        _node(21, "BindingGuidedSampler", (880, 140), (320, 90), "Binding-Guided Sampler", {},
              {"sampler": (20, 0), "bindings": (10, 0), "config": (11, 0)}),
        _node(22, "RandomNoise", (880, 280), (320, 82), "Noise", {"noise_seed": 16}),
        _node(23, "CFGGuider", (880, 400), (320, 98), "CFG Guider", {"cfg": 7.5},
              {"model": (4, 0), "positive": (10, 2), "negative": (7, 0)}),
        _node(24, "BasicScheduler", (880, 540), (320, 106), "Scheduler",
              {"scheduler": "normal", "steps": 50, "denoise": 1.0}, {"model": (4, 0)}),
        _node(25, "SamplerCustomAdvanced", (1250, 40), (300, 326), "Sampler Custom Advanced", {},
              {"noise": (22, 0), "guider": (23, 0), "sampler": (21, 0), "sigmas": (24, 0), "latent_image": (5, 0)}),
        _node(8, "VAEDecode", (1600, 40), (210, 46), "VAE Decode", {}, {"samples": (25, 0), "vae": (4, 2)}),
        _node(9, "SaveImage", (1600, 140), (420, 460), "Save Image",
              {"filename_prefix": "binding_guidance/syngen_custom_sampler"}, {"images": (8, 0)}),
    ]
    note = (
        "Binding guidance inside a custom-sampling graph. 'Binding-Guided Sampler' wraps the SAMPLER from "
        "KSamplerSelect; plug it into SamplerCustomAdvanced (or SamplerCustom) with any guider, scheduler and "
        "noise. Here: SynGen on \"" + prompt + "\", DDIM, 50 steps, CFG 7.5, guidance on the first half.\n\n"
        "Use this form to combine binding guidance with other guiders or custom sigma schedules. The "
        "Binding-Guided KSampler workflows are the simpler form and also show attention maps and the loss "
        "curve.\n\n" + COMMON_NOTE.split(" 'Attention maps'")[0]
    )
    nodes.append(_note(note))
    return nodes, "Binding Guidance: custom sampler"


FLUX_FILES = {"unet": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5": "t5xxl_fp16.safetensors",
              "vae": "ae.safetensors"}
SD35_FILES = {"ckpt": "sd3.5_large.safetensors", "clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors",
              "t5": "t5xxl_fp16.safetensors"}


def _dit_graph(name: str, loaders: list[dict], links: dict, sampler: dict, about: str, needs: str) -> list[dict]:
    """A SynGen graph for a DiT: its loader nodes, then the nodes every DiT workflow shares. ``links`` names where
    the model, clip, vae and positive conditioning come from; ``sampler`` holds steps, cfg and scheduler."""
    nodes = [
        *loaders,
        *_prompt_nodes("syngen", links["clip"], ((420, 460), (400, 100)),
                       links.get("negative_title", "Negative prompt")),
        _node(5, "EmptySD3LatentImage", (420, 1000), (400, 106), "Empty Latent Image (16 channels)",
              {"width": 1024, "height": 1024, "batch_size": 1}),
        *_ksampler_nodes(name, {"sampler_name": "euler", **sampler}, links),
    ]
    sd15_needs = COMMON_NOTE[COMMON_NOTE.index("Needs an SD1.x checkpoint"):]
    note = f"{METHODS['syngen']['about']}\n\n{about}\n\n" + COMMON_NOTE.replace(sd15_needs, needs)
    nodes.append(_note(note))
    return nodes


def flux_graph() -> tuple[list[dict], str]:
    """Flux.1-dev: UNETLoader + DualCLIPLoader (flux) + VAELoader, FluxGuidance, CFG 1, SynGen on T5 positions."""
    loaders = [
        _node(4, "UNETLoader", (30, 330), (330, 82), "Load Diffusion Model (Flux.1)",
              {"unet_name": FLUX_FILES["unet"], "weight_dtype": "default"}),
        _node(16, "DualCLIPLoader", (30, 460), (330, 130), "Load CLIP-L + T5 (flux)",
              {"clip_name1": FLUX_FILES["clip_l"], "clip_name2": FLUX_FILES["t5"], "type": "flux",
               "device": "default"}),
        _node(17, "VAELoader", (30, 630), (330, 58), "Load VAE", {"vae_name": FLUX_FILES["vae"]}),
        _node(18, "FluxGuidance", (420, 400), (400, 58), "Flux guidance", {"guidance": 3.5},
              {"conditioning": (10, 2)}),
    ]
    about = ("Flux.1-dev: the guidance reads the joint attention of the double-stream blocks (image queries to the "
             "T5 text keys, renormalised over the text) at 1/32 of the image side, and moves the latent at the "
             "first half of the steps. CFG 1 as Flux-dev is usually run (FluxGuidance sets the distilled "
             "guidance); fast mode works there too.")
    needs = (f"Needs {FLUX_FILES['unet']} (diffusion_models), {FLUX_FILES['clip_l']} and {FLUX_FILES['t5']} "
             f"(text_encoders) and {FLUX_FILES['vae']} (vae).")
    links = {"model": (4, 0), "clip": (16, 0), "vae": (17, 0), "positive": (18, 0),
             "negative_title": "Negative prompt (unused at CFG 1)"}
    sampler = {"steps": 20, "cfg": 1.0, "scheduler": "simple"}
    return _dit_graph("syngen_flux", loaders, links, sampler, about, needs), "Binding Guidance: syngen (Flux.1)"


def sd35_graph() -> tuple[list[dict], str]:
    """SD3.5: checkpoint (MMDiT + VAE) + TripleCLIPLoader, CFG 4.5, SynGen on the T5 segment of the context."""
    loaders = [
        _node(4, "CheckpointLoaderSimple", (30, 330), (330, 98), "Load Checkpoint (SD3.5)",
              {"ckpt_name": SD35_FILES["ckpt"]}),
        _node(16, "TripleCLIPLoader", (30, 470), (330, 106), "Load CLIP-L + CLIP-G + T5",
              {"clip_name1": SD35_FILES["clip_l"], "clip_name2": SD35_FILES["clip_g"],
               "clip_name3": SD35_FILES["t5"]}),
    ]
    about = ("SD3.5: the guidance reads the joint attention of every MMDiT block (image queries to the text keys "
             "of the T5 segment of SD3's [CLIP-L+G, T5] context, renormalised over the text) at 1/32 of the image "
             "side, and moves the latent at the first half of the steps.")
    needs = (f"Needs {SD35_FILES['ckpt']} (checkpoints) and {SD35_FILES['clip_l']}, {SD35_FILES['clip_g']} and "
             f"{SD35_FILES['t5']} (text_encoders); SD3.5 Medium and SD3 Medium work too.")
    links = {"model": (4, 0), "clip": (16, 0), "vae": (4, 2), "positive": (10, 2)}
    sampler = {"steps": 28, "cfg": 4.5, "scheduler": "sgm_uniform"}
    return _dit_graph("syngen_sd35", loaders, links, sampler, about, needs), "Binding Guidance: syngen (SD3.5)"


WORKFLOWS = {
    "syngen_sd15": lambda: standard_graph("syngen"),
    "syngen_entropy_sd15": lambda: standard_graph("syngen_entropy"),
    "divide_and_bind_sd15": lambda: standard_graph("divide_and_bind"),
    "attend_and_excite_sd15": lambda: standard_graph("attend_and_excite"),
    "tsam_sd15": lambda: standard_graph("tsam"),
    "syngen_custom_sampler_sd15": custom_sampler_graph,
    "syngen_flux": flux_graph,
    "syngen_sd35": sd35_graph,
}


def build_ui(name: str, specs: list[dict], object_info: dict, pack_nodes: set[str]) -> dict:
    """Lay the spec out as the editor's UI format (schema 0.4)."""
    cnr_id, version = pack_identity()
    links: list[list] = []
    node_inputs: dict[int, list[dict]] = {}
    node_outputs: dict[int, list[dict]] = {}
    for spec in specs:
        if spec["type"] == "Note":
            continue
        info = object_info[spec["type"]]
        node_outputs[spec["id"]] = [
            {"localized_name": name, "name": name, "type": kind, "links": []}
            for name, kind in zip(info["output_name"], info["output"], strict=True)]
    for spec in specs:
        if spec["type"] == "Note":
            continue
        info = object_info[spec["type"]]
        sockets, widgets = [], []
        for name, input_spec, required in input_specs(info):
            kind = "COMBO" if isinstance(input_spec[0], list) else input_spec[0]
            entry = {"localized_name": name, "name": name}
            if not required:
                entry["shape"] = 7  # the editor draws optional sockets hollow
            if is_widget(input_spec):  # the editor lists widget inputs after the sockets, unlinked
                widgets.append({**entry, "type": kind, "widget": {"name": name}, "link": None})
                continue
            if name not in spec["links_in"] and required:
                raise ValueError(f"{spec['type']} {spec['id']}: required input '{name}' is not connected")
            sockets.append({**entry, "type": kind, "link": None})
        node_inputs[spec["id"]] = sockets + widgets
    link_id = 0
    for spec in specs:  # links numbered in node order
        for slot, entry in enumerate(node_inputs.get(spec["id"], [])):
            if entry["name"] not in spec["links_in"]:
                continue
            origin, origin_slot = spec["links_in"][entry["name"]]
            link_id += 1
            kind = node_outputs[origin][origin_slot]["type"]
            links.append([link_id, origin, origin_slot, spec["id"], slot, kind])
            entry["link"] = link_id
            node_outputs[origin][origin_slot]["links"].append(link_id)
    order = _execution_order(specs)
    nodes = []
    for spec in specs:
        node = {"id": spec["id"], "type": spec["type"], "pos": spec["pos"], "size": spec["size"], "flags": {},
                "order": order[spec["id"]], "mode": 0}
        if spec["type"] == "Note":
            node.update(inputs=[], outputs=[], title=spec["title"], properties={},
                        widgets_values=[spec["widgets"]["text"]], **NOTE_COLORS)
            nodes.append(node)
            continue
        info = object_info[spec["type"]]
        values = []
        for name, control in widget_layout(info):
            if name not in spec["widgets"]:
                raise ValueError(f"{spec['type']} {spec['id']}: no value for widget '{name}'")
            values.append(_js_number(spec["widgets"][name]))
            if control:
                values.append("fixed")
        unknown = set(spec["widgets"]) - {name for name, _ in widget_layout(info)}
        if unknown:
            raise ValueError(f"{spec['type']} {spec['id']}: widgets {sorted(unknown)} are not in the schema")
        if spec["type"] in pack_nodes:
            properties = {"Node name for S&R": spec["type"], "cnr_id": cnr_id, "ver": version}
        else:
            properties = {"Node name for S&R": spec["type"], "cnr_id": "comfy-core", "ver": COMFY_VERSION}
        if spec["type"] == "CheckpointLoaderSimple" and spec["widgets"]["ckpt_name"] == SD15:
            properties["models"] = [SD15_MODEL]
        node.update(inputs=node_inputs[spec["id"]], outputs=node_outputs[spec["id"]], title=spec["title"],
                    properties=properties, widgets_values=values)
        nodes.append(node)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"binding-guidance/workflows/{name}")),
        "revision": 0,
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}, "frontendVersion": FRONTEND_VERSION,
                  "workflowRendererVersion": "LG"},
        "version": 0.4,
    }


def _js_number(value):
    """Numbers as the editor writes them (JavaScript has no 20.0: it saves 20)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _execution_order(specs: list[dict]) -> dict[int, int]:
    """Topological order (sources first, Notes first), ties by id: the ``order`` field the editor saves."""
    deps = {s["id"]: {origin for origin, _slot in s["links_in"].values()} for s in specs}
    order: dict[int, int] = {}
    while len(order) < len(specs):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        if not ready:
            raise ValueError("cycle in workflow spec")
        for node_id in ready:
            order[node_id] = len(order)
    return order


def api_twin(ui: dict, object_info: dict) -> dict:
    return ui_to_api(ui, object_info)


def write_json(path: Path, data: dict, compact_api: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compact_api:
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in data.items()]
        path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_object_info() -> tuple[dict, set[str]]:
    """object_info of core + this pack, with the pack loaded through ComfyUI's real custom-node loader."""
    from devkit.comfy_env import bootstrap_comfy

    bootstrap_comfy()
    import nodes
    from devkit.workflow_tools import object_info_from_mappings

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes")), "pack failed to load"
    pack_nodes = set(nodes.NODE_CLASS_MAPPINGS) - before
    return object_info_from_mappings(nodes), pack_nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", action="store_true", help="only regenerate the API twins from the UI files")
    args = parser.parse_args()
    object_info, pack_nodes = load_object_info()
    if not args.api:
        for name, make in WORKFLOWS.items():
            specs, _title = make()
            write_json(WORKFLOW_DIR / f"{name}.json", build_ui(name, specs, object_info, pack_nodes))
    for path in ui_workflow_paths():
        write_json(API_DIR / path.name, api_twin(load_json(path), object_info), compact_api=True)
        print("wrote", path.relative_to(ROOT), "and", (API_DIR / path.name).relative_to(ROOT))


if __name__ == "__main__":
    main()
