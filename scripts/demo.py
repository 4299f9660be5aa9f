"""Run workflows/syngen_sd15.json headless through real ComfyUI and write out/ (images, overlays, report).

    make demo                          # tiny built-in random model (no download)
    make demo CKPT=/path/model.safetensors
    make demo ARCH=sd2|sdxl            # tiny model of another family
    make demo ARCH=flux                # tiny Flux.1 model (workflows/syngen_flux.json, CFG 1)
    make demo ARCH=sd3                 # tiny SD3 model (workflows/syngen_sd35.json)

The report (out/demo_report.json) lists the bindings, and per guided step the SynGen loss before and after the
update, and the loss along the unguided trajectory (same seed, step size 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from devkit.comfy_env import bootstrap_comfy

ROOT = Path(__file__).resolve().parent.parent

WORKFLOW = ROOT / "workflows" / "syngen_sd15.json"
DIT_WORKFLOWS = {"flux": ROOT / "workflows" / "syngen_flux.json", "sd3": ROOT / "workflows" / "syngen_sd35.json"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a .safetensors/.ckpt checkpoint; default: a tiny random model")
    parser.add_argument(
        "--arch", default="sd15", help="tiny model family when no checkpoint is given (sd15, sd2, sdxl, flux, sd3)"
    )
    parser.add_argument("--prompt", default="a pink sunflower and a yellow flamingo")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--steps", type=int, help="default: 50 with a checkpoint, 10 with the tiny model")
    parser.add_argument("--size", type=int, help="image side in pixels; default 512 (checkpoint) or 128 (tiny)")
    parser.add_argument("--out", default=str(ROOT / "out"))
    return parser.parse_args()


def checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser().resolve()
        if not path.is_file():
            sys.exit(f"--checkpoint: {path} does not exist.")
        return path
    from devkit import tiny_models

    if args.arch in DIT_WORKFLOWS:  # built in memory by stand-in loader nodes; this folder caches text encoders
        return ROOT / ".cache" / "test-models" / "dit_tiny"
    path = ROOT / ".cache" / "test-models" / f"{args.arch}_tiny_v1.safetensors"
    if not path.exists():
        print(f"building the tiny {args.arch} test model at {path} ...", flush=True)
        builder = getattr(tiny_models, "build_tiny_checkpoint", None)
        if builder is not None:
            builder(args.arch, path)
        elif args.arch == "sd15":
            tiny_models.build_sd15_tiny_checkpoint(path)
        else:
            sys.exit(f"--arch {args.arch}: no tiny model builder for this family.")
    return path


def build_graph(nodes_module: object, ckpt_name: str, args: argparse.Namespace, step_size: float) -> dict:
    from devkit.workflow_tools import object_info_from_mappings, ui_to_api

    dit = args.arch in DIT_WORKFLOWS and not args.checkpoint
    workflow = DIT_WORKFLOWS[args.arch] if dit else WORKFLOW
    graph = ui_to_api(json.loads(workflow.read_text()), object_info_from_mappings(nodes_module))
    if dit:
        from devkit.tiny_dit_models import use_tiny_dit

        graph = use_tiny_dit(graph, size=args.size, steps=args.steps)
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        elif kind == "EmptyLatentImage":
            inputs.update(width=args.size, height=args.size, batch_size=1)
        elif kind == "CLIPTextEncode" and inputs.get("text"):
            inputs["text"] = args.prompt
        elif kind == "ParseBindings":
            inputs["prompt"] = args.prompt
        elif kind == "BindingLossConfig":
            inputs["step_size"] = step_size
            inputs["advanced"] = "measure_after_step = true" if step_size > 0 else ""
        elif kind == "BindingGuidedKSampler":
            inputs.update(seed=args.seed, steps=args.steps)
        elif kind == "PreviewImage":
            node["class_type"] = "SaveImage"
            inputs["filename_prefix"] = "demo/preview"
        elif kind == "SaveImage":
            inputs["filename_prefix"] = "demo/image"
    return graph


def run(prompt: dict) -> dict:
    from devkit.comfy_env import execute_prompt

    try:
        return execute_prompt(prompt, "demo")
    except (ValueError, RuntimeError) as error:
        sys.exit(f"the workflow did not run: {error}")


def save_overlays(pack: object, report: dict, image_path: Path, out: Path) -> list[str]:
    """One picture per binding: noun and modifier maps overlaid on the final image."""
    import importlib

    import numpy as np
    import torch
    from PIL import Image

    previews = importlib.import_module(f"{pack.__name__}.guidance.previews")
    types = importlib.import_module(f"{pack.__name__}.binding_losses.types")
    maps_info = report.get("maps") or {}
    if not maps_info:
        return []
    positions = {int(p): torch.tensor(v) for p, v in maps_info["positions"].items()}
    maps = torch.zeros(max(positions) + 1, maps_info["height"], maps_info["width"])
    for position, values in positions.items():
        maps[position] = values
    with Image.open(image_path) as picture:
        image = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
    written = []
    for index, binding in enumerate(report["bindings"]):
        noun = tuple(binding["noun_positions"])
        modifiers = tuple(tuple(word) for word in binding["modifier_positions"])
        layout = types.TokenLayout(bindings=(types.TokenBinding(noun, modifiers),), prompt_positions=())
        labels = {noun: binding["noun"], **{m: name for m, name in zip(modifiers, binding["modifiers"], strict=False)}}
        panel = previews.attention_panels(maps, layout, labels, image)[0]
        path = out / f"attention_overlay_{index}_{binding['noun'].replace(' ', '_')}.png"
        Image.fromarray((panel.numpy() * 255).astype("uint8")).save(path)
        written.append(str(path.relative_to(out)))
    return written


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out / "demo", ignore_errors=True)
    for stale in out.glob("attention_overlay_*.png"):
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    bootstrap_comfy()
    import folder_paths
    import nodes

    checkpoint = checkpoint_path(args)
    tiny = not args.checkpoint
    args.steps = args.steps or (10 if tiny else 50)
    args.size = args.size or (128 if tiny else 512)
    folder_paths.set_output_directory(str(out))
    folder_paths.add_model_folder_path("checkpoints", str(checkpoint.parent))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if tiny and args.arch in DIT_WORKFLOWS:
        from devkit.tiny_dit_models import register_tiny_dit_nodes

        register_tiny_dit_nodes(nodes, checkpoint)
    if not asyncio.run(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes")):
        sys.exit("the pack failed to load into ComfyUI (see the log above).")
    pack = sys.modules[str(ROOT).replace(".", "_x_")]

    started = time.time()
    guided_graph = build_graph(nodes, checkpoint.name, args, step_size=20.0)
    guided = run(guided_graph)
    guided_seconds = time.time() - started
    unguided_graph = build_graph(nodes, checkpoint.name, args, step_size=0.0)
    for node in unguided_graph.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "demo/unguided"
    unguided = run(unguided_graph)
    sampler_id = next(k for k, n in guided_graph.items() if n["class_type"] == "BindingGuidedKSampler")
    report = guided[sampler_id]["binding_report"][0]
    baseline = {s["step"]: s["loss_before_update"] for s in unguided[sampler_id]["binding_report"][0]["steps"]}

    images = {}
    for node_id, node_output in guided.items():
        for image in node_output.get("images", []):
            kind = guided_graph[node_id]["_meta"].get("title", guided_graph[node_id]["class_type"])
            images.setdefault(kind, []).append(str(Path(image["subfolder"]) / image["filename"]))
    final = next(path for paths in images.values() for path in paths if "image_" in path)
    overlays = save_overlays(pack, report, out / final, out)

    steps = [
        {
            "step": s["step"],
            "sigma": s["sigma"],
            "loss_before_update": s["loss_before_update"],
            "loss_after_update": s["loss_after_update"],
            "loss_unguided": baseline.get(s["step"]),
        }
        for s in report["steps"]
    ]
    summary = {
        "checkpoint": str(checkpoint),
        "tiny_model": tiny,
        "arch": args.arch if tiny else "from checkpoint",
        "prompt": args.prompt,
        "seed": args.seed,
        "steps_total": args.steps,
        "size": args.size,
        "bindings": report["bindings"],
        "main_factor": report["main_factor"],
        "steps": steps,
        "loss_before_update": [s["loss_before_update"] for s in steps],
        "loss_after_update": [s["loss_after_update"] for s in steps],
        "loss_unguided": [s["loss_unguided"] for s in steps],
        "images": {"final": final, "overlays": overlays, "previews": images},
        "guided_run_seconds": round(guided_seconds, 2),
    }
    (out / "demo_report.json").write_text(json.dumps(summary, indent=2))
    lowered = sum(
        1 for s in steps if s["loss_after_update"] is not None and s["loss_after_update"] < s["loss_before_update"]
    )
    print(f"bindings: {[(b['noun'], b['modifiers']) for b in report['bindings']]}")
    print(f"guided steps: {len(steps)}; loss lowered by the update at {lowered} of them")
    print(f"wrote {out / 'demo_report.json'}, {final} and {len(overlays)} overlay(s)")


if __name__ == "__main__":
    main()
