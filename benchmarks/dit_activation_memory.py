"""Estimate the memory of one Flux.1 guidance pass at 1024 px, on CPU, from the activations autograd saves.

Builds real-width Flux.1-dev double-stream blocks (hidden 3072, 24 heads × 128, random bf16 weights) with one
and with two blocks, records every block and stops after the last one's attention (as the default does with the
19 double-stream blocks), and counts the bytes autograd saves for backward (weights excluded) at two small
latents with a 256-token T5 context. One more block costs the difference; the default is the one-block pass plus
18 such differences. Bytes are extrapolated linearly in the number of latent pixels (as
benchmarks/activation_memory.py does for SDXL; see its note on attention kernels).

    .venv/bin/python benchmarks/dit_activation_memory.py
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch
from activation_memory import bytes_saved_for_backward  # beside this script
from devkit.comfy_env import bootstrap_comfy, register_pack_package

ROOT = Path(__file__).resolve().parent.parent

FLUX_DEV = {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "axes_dim": [16, 56, 56],
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "depth_single_blocks": 0}
"""Flux.1-dev's configuration as ComfyUI detects it, without single-stream blocks (the default records none)."""
TEXT_TOKENS = 256
DEFAULT_BLOCKS = 19


def flux_with(depth: int) -> object:
    import comfy.supported_models
    from tiny_models import init_weights

    config = comfy.supported_models.Flux({**FLUX_DEV, "depth": depth})
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model({}, "")
    init_weights(model.diffusion_model, 0)
    return model


def saved_bytes(model: object, side: int) -> int:
    """Bytes autograd keeps for backward in one guidance forward (every block recorded) at a side×side latent."""
    capture = importlib.import_module("binding_guidance.attention_patch.capture")
    differentiable = importlib.import_module("binding_guidance.kernels.differentiable_attention")
    depth = len(model.diffusion_model.double_blocks)
    recorder = capture.capture_for_model(model, 4, lambda f: {f}, dit_blocks=f"double 0-{depth - 1}").recorder(True)
    options = recorder.model_options_with_patches(differentiable.with_differentiable_attention({}))
    x = torch.randn(1, 16, side, side, requires_grad=True)
    context = torch.randn(1, TEXT_TOKENS, 4096, dtype=torch.bfloat16)
    return bytes_saved_for_backward(model, lambda: model.apply_model(
        x, torch.tensor([1.0]), c_crossattn=context, y=torch.randn(1, 768), guidance=torch.tensor([3.5]),
        transformer_options=options["transformer_options"]))


def main() -> None:
    bootstrap_comfy()
    register_pack_package()
    started = time.time()
    sides = (16, 32)
    measured = {}
    for depth in (1, 2):
        model = flux_with(depth)
        measured[depth] = {side: saved_bytes(model, side) for side in sides}
        del model
    gib = 2**30

    def at_1024(values: dict[int, int]) -> float:
        per_pixel = (values[32] - values[16]) / (32 * 32 - 16 * 16)
        return values[16] - per_pixel * 16 * 16 + per_pixel * 128 * 128

    first, second = at_1024(measured[1]), at_1024(measured[2])
    per_block = second - first
    total = first + (DEFAULT_BLOCKS - 1) * per_block
    for depth in (1, 2):
        for side in sides:
            print(f"{depth} double block(s), latent {side}x{side}: {measured[depth][side] / gib:.3f} GiB saved")
    print(f"extrapolated to 128x128 (1024 px), {TEXT_TOKENS} text tokens: first block {first / gib:.2f} GiB, "
          f"each further block {per_block / gib:.2f} GiB")
    print(f"estimate for the default 19 double blocks: {total / gib:.1f} GiB saved for backward (bf16), batch 1")
    weights = {"bf16": 11.9e9 * 2 / gib, "fp8": 11.9e9 / gib}
    for kind, size in weights.items():
        print(f"with {kind} weights ({size:.1f} GiB): about {size + total / gib:.1f} GiB before the CFG pass")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
