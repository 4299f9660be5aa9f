"""Estimate the GPU memory of one SDXL guidance pass at 1024 px, on CPU, from the activations autograd saves.

Builds the real-width SDXL UNet (random weights, bf16), runs the guidance forward (recorder patches, early stop,
SDPA) at two small latents, counts the bytes autograd saves for backward (weights excluded: they are resident
anyway), and extrapolates linearly in the number of latent pixels. On CUDA, SDPA's memory-efficient kernels save
O(N) per attention call, so linear scaling is the right model there; an attention kernel that stores the full N×N
matrix would add quadratic terms this fit does not model. Measured on a GPU, it is an estimate no longer.

    .venv/bin/python benchmarks/activation_memory.py
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from devkit.comfy_env import bootstrap_comfy, register_pack_package

ROOT = Path(__file__).resolve().parent.parent


def bytes_saved_for_backward(model: object, forward: Callable[[], object]) -> int:
    """Bytes autograd keeps for backward while ``forward()`` runs (weights excluded: they are resident anyway).
    A ``RecordingComplete`` raised by the forward ends the pass early, as in sampling."""
    seen: dict[int, int] = {}
    resident = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        try:
            forward()
        except Exception as error:
            if type(error).__name__ != "RecordingComplete":
                raise
    return sum(seen.values())


def saved_bytes(model: object, recorder: object, options: dict, side: int) -> int:
    """Bytes autograd keeps for backward during one guidance forward at a ``side``×``side`` latent."""
    x = torch.randn(1, 4, side, side, requires_grad=True)
    context = torch.randn(1, 77, 2048, dtype=torch.bfloat16)
    y = torch.randn(1, 2816, dtype=torch.bfloat16)
    recorder.reset()
    return bytes_saved_for_backward(model, lambda: model.apply_model(
        x, torch.tensor([1.0]), c_crossattn=context, y=y, transformer_options=options["transformer_options"]))


def main() -> None:
    bootstrap_comfy()
    register_pack_package()
    import comfy.supported_models
    from devkit.tiny_models import SDXL_FULL_UNET, init_weights

    capture = importlib.import_module("binding_guidance.attention_patch")
    differentiable = importlib.import_module("binding_guidance.kernels.differentiable_attention")

    config = comfy.supported_models.SDXL(dict(SDXL_FULL_UNET))
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model({}, "")
    init_weights(model.diffusion_model, 0)
    weights = sum(p.numel() for p in model.diffusion_model.parameters())
    layers = capture.require_unet(model)
    recorder = capture.AttentionRecorder(capture.layers_at(layers, {capture.choose_main_factor(layers)}))
    options = differentiable.with_differentiable_attention(recorder.model_options_with_patches({}))

    sides = (16, 32)
    measured = {side: saved_bytes(model, recorder, options, side) for side in sides}
    per_pixel = (measured[32] - measured[16]) / (32 * 32 - 16 * 16)
    fixed = measured[16] - per_pixel * 16 * 16
    at_1024 = fixed + per_pixel * 128 * 128
    gib = 2**30
    fp16_weights = weights * 2 / gib
    print(f"SDXL UNet: {weights / 1e9:.2f} B parameters, {len(recorder.layers)} recorded layers at factor 4")
    for side in sides:
        print(f"latent {side}x{side}: {measured[side] / gib:.3f} GiB saved for backward (bf16)")
    print(f"extrapolated to 128x128 (1024 px): {at_1024 / gib:.2f} GiB saved for backward, batch 1")
    print(
        f"estimate for guided SDXL at 1024 px: fp16 weights {fp16_weights:.2f} GiB + guidance activations "
        f"{at_1024 / gib:.2f} GiB ≈ {fp16_weights + at_1024 / gib:.1f} GiB (plus the CFG pass's transient memory, "
        "which plain sampling needs too)"
    )


if __name__ == "__main__":
    main()
