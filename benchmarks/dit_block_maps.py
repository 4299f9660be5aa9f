"""Per-block image→text maps of the tiny DiT models: does each block give a non-degenerate map?

For each tiny family (tools/devkit: Flux.1, SD3, Chroma, Z-Image, Qwen-Image; random weights, the real tokenizers
and text encoders), a guided run of 2 euler steps at a 32×32 latent records one block alone (``dit_blocks``) and
keeps the maps of its guided step (step 0, σ = 1). Over the prompt tokens, at the losses' level (factor 4), it
prints the mean normalised entropy of a cell's distribution over the prompt tokens (1: uniform, the map tells
tokens apart nowhere; 0: one token per cell) and the mean spatial coefficient of variation of a token's map
(0: flat). Random weights say nothing about which blocks bind best on trained models.

    .venv/bin/python benchmarks/dit_block_maps.py
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch
from devkit.comfy_env import load_pack_into_comfy

ROOT = Path(__file__).resolve().parent.parent


class _Harness:
    """What devkit.dit_runs needs of the test harness: the pack's modules and ComfyUI's nodes."""

    def __init__(self) -> None:
        self.nodes, self.pack = load_pack_into_comfy()

    def module(self, name: str) -> Any:
        return importlib.import_module(f"{self.pack.__name__}.{name}")

    def node(self, name: str) -> Any:
        return self.nodes.NODE_CLASS_MAPPINGS[name]()


def tiny_pair(arch: str) -> tuple[Any, Any]:
    """The tiny model and CLIP of ``arch``, as the tests build them."""
    from devkit.tiny_dit_files import load_tiny_clip
    from devkit.tiny_dit_models import tiny_flux_model, tiny_sd3_model
    from devkit.tiny_family_models import FAMILY_MODELS

    if arch in FAMILY_MODELS:
        make_model, make_clip = FAMILY_MODELS[arch]
        return make_model(), make_clip()
    model = tiny_flux_model() if arch == "flux" else tiny_sd3_model()
    return model, load_tiny_clip(arch, ROOT / ".cache" / "test-models")


def map_statistics(maps: torch.Tensor, prompt_positions: tuple[int, ...]) -> tuple[float, float]:
    """(mean normalised entropy over the prompt tokens per cell, mean spatial coefficient of variation per token)."""
    prompt = maps[0, list(prompt_positions)].double()
    shares = prompt / prompt.sum(dim=0, keepdim=True)
    entropy = -(shares * shares.clamp_min(1e-30).log()).sum(dim=0) / math.log(len(prompt_positions))
    flat = prompt.flatten(1)
    variation = flat.std(dim=1) / flat.mean(dim=1)
    return float(entropy.mean()), float(variation.mean())


def main() -> None:
    from devkit.dit_runs import config, encoded_case, guided

    harness = _Harness()
    capture = harness.module("attention_patch.capture")
    print("| family | block | normalised entropy | spatial variation |")
    print("|---|---|---|---|")
    for arch in ("flux", "chroma", "sd3", "z_image", "qwen_image"):
        case = encoded_case(harness, *tiny_pair(arch))
        default = [block.label for block in capture.capture_for_model(case["model"], 4, lambda f: {f}).blocks]
        diffusion_model = case["model"].model.diffusion_model
        every = [b.label for b in capture.flux_blocks(diffusion_model)] if arch in ("flux", "chroma") else default
        for label in every:
            _, report = guided(harness, case, config(harness, advanced=f"dit_blocks = {label}"), steps=2)
            entropy, variation = map_statistics(report.last_maps, case["bindings"].layout.prompt_positions)
            marker = " (default)" if label in default else ""
            print(f"| {arch} | {label}{marker} | {entropy:.3f} | {variation:.3f} |")


if __name__ == "__main__":
    main()
