"""Estimate the memory of one DiT guidance pass at 1024 px (Flux.1-dev, SD3.5 Large, SD3.5 Medium), on CPU.

Builds real-width blocks with random weights through ComfyUI's own model classes: Flux.1-dev's double-stream blocks
(hidden 3072, 24 heads × 128) and SD3.5's joint blocks (hidden 64·depth: Large 38 blocks × 2432, Medium 24 × 1536
with the image self-attention of its first 13 blocks), as ComfyUI's detection configures them. Weights are stored
in bf16 (computed in bf16, no cast) or in fp8 e4m3fn and computed in bf16 through ComfyUI's manual cast.

The pass is the guidance pass as the sampler runs it: every block recorded, the forward ended after the last
one's attention, a backward from the maps to the latent, with and without ``dit_checkpointing``. Its memory is
the peak of the bytes allocated above what was live before it (the weights were), read from the PyTorch
profiler's allocation events: saved activations, the cast weights kept for the backward, recomputation and
gradients included. It is measured with 2 and 3 blocks (the models are cut after their first blocks) at 16×16
and 32×32 latents with the family's text length, then extrapolated linearly in latent pixels (to 128×128, 1024 px)
and in blocks (one more block costs the 3-block peak minus the 2-block peak), as benchmarks/activation_memory.py
does for SDXL. Linear in pixels holds for attention kernels that keep O(tokens) for the backward (SDPA's flash
kernels on CPU and CUDA).

``--device cuda`` measures instead of estimating: it builds each whole model on the GPU (Flux.1-dev with its 19
double- and 38 single-stream blocks), once per weight dtype, and runs the same pass at a 128×128 latent (1024 px)
with ``dit_checkpointing`` off and on: the default blocks recorded (Flux: the double-stream blocks; SD3: all), the
forward ended after the last one, a backward to the latent. Per case it prints the weights'
``torch.cuda.memory_allocated``, the pass's ``torch.cuda.max_memory_allocated`` above what was allocated before it
and in all, and the pass's wall time (after one warm-up pass). ``--device cpu`` runs the same code on the CPU
(peak from the profiler, as above); with ``--side 16 --depth-limit 2`` (every block list cut to 2) it is small
enough to check that the code works.

    PYTHONPATH=tools OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dit_activation_memory.py [--family flux]
    python benchmarks/dit_activation_memory.py --device cuda [--family flux]
    PYTHONPATH=tools OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dit_activation_memory.py --device cpu --side 16 \
        --depth-limit 2 --family sd35-medium
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from devkit.comfy_env import bootstrap_comfy, register_pack_package
from devkit.tiny_models import init_weights

GIB = 2**30
SIDES = (16, 32)
DEPTHS = (2, 3)


@dataclass(frozen=True)
class Family:
    """One model as ComfyUI configures it, and what a guidance pass on it needs."""

    name: str
    config_class: str
    unet_config: dict
    blocks: int
    """Blocks the default ``dit_blocks`` records (the forward and backward run through all of them)."""
    parameters: float
    """Parameters of the whole diffusion model (resident weights)."""
    text_tokens: int
    context_width: int
    pooled_width: int


def _sd35(depth: int, pos_embed_max_size: int, self_attention_layers: list[int]) -> dict:
    width = 64 * depth
    return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": depth, "adm_in_channels": 2048,
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": width}},
            "pos_embed_max_size": pos_embed_max_size, "num_patches": pos_embed_max_size**2, "qk_norm": "rms",
            "pos_embed_scaling_factor": None, "x_block_self_attn_layers": self_attention_layers}


FAMILIES = {
    "flux": Family(
        "Flux.1-dev (19 double blocks)", "Flux",
        {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
         "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "axes_dim": [16, 56, 56],
         "theta": 10000, "patch_size": 2, "qkv_bias": True, "depth": 19, "depth_single_blocks": 38},
        19, 11.9e9, 256, 4096, 768),
    "sd35-large": Family("SD3.5 Large (38 joint blocks)", "SD3", _sd35(38, 192, []), 38, 8.1e9, 154, 4096, 2048),
    "sd35-medium": Family("SD3.5 Medium (24 joint blocks)", "SD3", _sd35(24, 384, list(range(13))), 24, 2.5e9,
                          154, 4096, 2048),
}
"""ComfyUI's detected configurations (model_detection.py); the text lengths are ComfyUI's defaults (Flux: T5 padded
to 256; SD3: 77 CLIP-L‖G + 77 T5)."""

CPU = torch.device("cpu")
WEIGHTS = {"bf16": (torch.bfloat16, None), "fp8 (manual cast to bf16)": (torch.float8_e4m3fn, torch.bfloat16)}
"""Stored weight dtype → (dtype, ComfyUI manual-cast compute dtype or None)."""


def build(family: Family, weights: str, device: torch.device, blocks: int | None = None,
          single_blocks: int | None = None) -> object:
    """ComfyUI's model for ``family`` (built on the meta device, then materialised on ``device``), random weights
    stored as ``WEIGHTS[weights]`` says; ``blocks`` keeps only the first double-stream (Flux) or joint (SD3) blocks,
    ``single_blocks`` the first single-stream blocks (None: all)."""
    import comfy.supported_models

    config = getattr(comfy.supported_models, family.config_class)(dict(family.unet_config))
    config.set_inference_dtype(*WEIGHTS[weights])
    model = config.get_model({}, "", device=torch.device("meta"))
    diffusion_model = model.diffusion_model
    for name, keep in (("double_blocks", blocks), ("joint_blocks", blocks), ("single_blocks", single_blocks)):
        if hasattr(diffusion_model, name) and keep is not None:
            setattr(diffusion_model, name, torch.nn.ModuleList(list(getattr(diffusion_model, name))[:keep]))
    diffusion_model.to_empty(device=device)
    model.model_sampling.to(device)
    diffusion_model.requires_grad_(False)  # as the sampler leaves a model ComfyUI loaded (inference_tensors.py)
    init_weights(diffusion_model, 0)
    with torch.no_grad():
        for buffer in diffusion_model.buffers():
            buffer.copy_((torch.randn(buffer.shape, device=device) * 0.02).to(buffer.dtype))
    return model


def peak_bytes(run: Callable[[], None]) -> int:
    """Peak of the bytes allocated above what was live before ``run()``, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def guidance_pass(family: Family, model: object, side: int, checkpointing: bool, device: torch.device = CPU,
                  dit_blocks: str | None = None) -> Callable[[], None]:
    """One guidance pass on ``model`` at a side×side latent: forward, loss, backward. ``dit_blocks`` names the
    recorded blocks (None: every double-stream (Flux) or joint (SD3) block of the model)."""
    capture = importlib.import_module("binding_guidance.attention_patch.capture")
    recording_complete = importlib.import_module("binding_guidance.attention_patch").RecordingComplete
    differentiable = importlib.import_module("binding_guidance.kernels.differentiable_attention")
    if dit_blocks is None:
        blocks = len(getattr(model.diffusion_model, "double_blocks", None) or model.diffusion_model.joint_blocks)
        dit_blocks = f"{'double' if family.config_class == 'Flux' else 'joint'} 0-{blocks - 1}"
    plan = capture.capture_for_model(model, 4, lambda f: {f}, dit_blocks=dit_blocks, dit_checkpointing=checkpointing)
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, side, side, generator=generator).to(device)
    context = torch.randn(1, family.text_tokens, family.context_width, generator=generator).to(device)
    pooled = torch.randn(1, family.pooled_width, generator=generator).to(device)
    extra = {"guidance": torch.tensor([3.5], device=device)} if family.config_class == "Flux" else {}

    def run() -> None:
        recorder = plan.recorder(stop_early=True)
        options = recorder.model_options_with_patches(differentiable.with_differentiable_attention({}))
        leaf = latent.clone().requires_grad_(True)
        try:
            model.apply_model(leaf, torch.tensor([0.6], device=device), c_crossattn=context, y=pooled,
                              transformer_options=options["transformer_options"], **extra)
        except recording_complete:
            pass
        maps = recorder.levels()[4].mean
        torch.autograd.grad((maps * maps.detach()).sum(), leaf)

    return run


def measure(family: Family, weights: str) -> dict[bool, dict[tuple[int, int], int]]:
    """Measured peaks by checkpointing, then (blocks, side)."""
    measured: dict[bool, dict[tuple[int, int], int]] = {False: {}, True: {}}
    for blocks in DEPTHS:
        model = build(family, weights, CPU, blocks, single_blocks=0)
        for checkpointing, peaks in measured.items():
            for side in SIDES:
                peaks[blocks, side] = peak_bytes(guidance_pass(family, model, side, checkpointing))
        del model
    return measured


def extrapolate(family: Family, measured: dict[tuple[int, int], int]) -> tuple[float, float]:
    """(each further block, the pass with the family's recorded blocks) at 1024 px, in bytes."""

    def at_1024(blocks: int) -> float:
        small, large = measured[blocks, SIDES[0]], measured[blocks, SIDES[1]]
        per_pixel = (large - small) / (SIDES[1] ** 2 - SIDES[0] ** 2)
        return small + per_pixel * (128 * 128 - SIDES[0] ** 2)

    per_block = at_1024(DEPTHS[1]) - at_1024(DEPTHS[0])
    return per_block, at_1024(DEPTHS[1]) + (family.blocks - DEPTHS[1]) * per_block


def report(family: Family, weights: str, checkpointing: bool, measured: dict[tuple[int, int], int]) -> None:
    per_block, total = extrapolate(family, measured)
    small = ", ".join(f"{b} blocks {s}x{s}: {v / GIB:.3f}" for (b, s), v in measured.items())
    print(f"{family.name}, {weights} weights, dit_checkpointing {'on' if checkpointing else 'off'}")
    print(f"  measured peak GiB: {small}")
    resident = family.parameters * (1 if WEIGHTS[weights][0] == torch.float8_e4m3fn else 2) / GIB
    print(f"  1024 px: each further block {per_block / GIB:.2f} GiB; guidance pass peak {total / GIB:.1f} GiB "
          f"+ weights {resident:.1f} GiB = {total / GIB + resident:.1f} GiB", flush=True)


def allocated_bytes(model: object, device: torch.device) -> int:
    """What is allocated with ``model`` built: ``torch.cuda.memory_allocated`` on CUDA, else its tensors' bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def timed_peak(run: Callable[[], None], device: torch.device) -> tuple[int, int | None, float]:
    """(peak bytes above what was allocated before, ``max_memory_allocated`` on CUDA, seconds) of one ``run()``.
    On CPU the peak is the profiler's, and the time includes the profiler's overhead."""
    if device.type != "cuda":
        started = time.perf_counter()
        peak = peak_bytes(run)
        return peak, None, time.perf_counter() - started
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    total = torch.cuda.max_memory_allocated()
    return total - before, total, seconds


def measure_on_device(family: Family, weights: str, device: torch.device, side: int, depth_limit: int | None) -> None:
    """Build ``family`` once on ``device`` and print the guidance pass's memory and time with and without
    ``dit_checkpointing``."""
    started = time.perf_counter()
    model = build(family, weights, device, depth_limit, depth_limit)
    resident = allocated_bytes(model, device)
    lists = [(n, len(getattr(model.diffusion_model, f"{n}_blocks", ()))) for n in ("double", "single", "joint")]
    blocks = " + ".join(f"{count} {kind}" for kind, count in lists if count)
    print(f"{family.name.split(' (')[0]} ({blocks} blocks), {weights} weights, {device.type}, {side}x{side} latent, "
          f"{family.text_tokens} text tokens: weights {resident / GIB:.2f} GiB allocated "
          f"(built in {time.perf_counter() - started:.1f} s)", flush=True)
    for checkpointing in (False, True):
        label = f"  dit_checkpointing {'on' if checkpointing else 'off'}:"
        try:
            run = guidance_pass(family, model, side, checkpointing, device, dit_blocks="")
            run()  # warm-up: kernel choice, cuBLAS workspace, lazy initialisation
            peak, total, seconds = timed_peak(run, device)
        except torch.OutOfMemoryError as error:
            print(f"{label} out of memory ({str(error).splitlines()[0]})", flush=True)
            continue
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        whole = f", max_memory_allocated {total / GIB:.2f} GiB" if total is not None else ""
        print(f"{label} pass peak {peak / GIB:.3f} GiB above the weights{whole}, {seconds:.2f} s", flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def estimate(families: list[str]) -> None:
    """The CPU estimate at 1024 px (the script's default)."""
    started = time.time()
    for key in families:
        for weights in WEIGHTS:
            for checkpointing, measured in measure(FAMILIES[key], weights).items():
                report(FAMILIES[key], weights, checkpointing, measured)
    print(f"(batch 1, weights excluded from the peak; {time.time() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append",
                        help="model(s) to measure (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="measure one pass of the whole model on this device (default: the CPU estimate)")
    parser.add_argument("--side", type=int, default=128, help="with --device: latent side (default 128, 1024 px)")
    parser.add_argument("--depth-limit", type=int,
                        help="with --device: keep only the first N blocks of each block list (default: all)")
    args = parser.parse_args()
    families = args.family or list(FAMILIES)
    if args.device is None and (args.side != 128 or args.depth_limit is not None):
        parser.error("--side and --depth-limit apply to --device cpu|cuda only")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device; use --device cpu or the default estimate")
        os.environ["BINDING_GUIDANCE_DEVICE"] = "cuda"
    bootstrap_comfy()
    register_pack_package()
    if args.device is None:
        estimate(families)
        return
    started = time.time()
    for key in families:
        for weights in WEIGHTS:
            measure_on_device(FAMILIES[key], weights, torch.device(args.device), args.side, args.depth_limit)
    print(f"(batch 1, {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
