"""What binding guidance costs: plain vs guided sampling on the same model, in one process.

Runs a random-weight UNet of the real SD1.5 width (860 M parameters; ``--arch sdxl``: the real SDXL UNet,
2.6 B) with hand-made conditioning through ComfyUI's real sampler, plain and with SynGen guidance in faithful
and fast mode. ``--arch flux`` and ``--arch sd3`` run narrow joint-attention DiTs built by ComfyUI's own classes,
with the real text lengths (Flux: 256 T5 tokens, CFG 1; SD3: 154, CFG 4.5): Flux.1-dev's 19 double- and 38
single-stream blocks at width 256 (4 heads × 64), and an SD3.5-Large-shaped MMDiT of depth 8 (width 512, 8 heads;
MMDiT's width is 64 × depth). Guidance records the default blocks (Flux: the double-stream blocks; SD3: all). It
prints:
- per-step time ratio: a run with every step guided vs the same run plain;
- whole-run ratio: half of the steps guided (the reference's 25 of 50), scaled down to --steps;
- the effect of ending the guidance forward after the last recorded layer (stop_forward_early), and on DiTs of
  ``dit_checkpointing`` (the recomputation of the blocks before the last recorded one in the backward);
- peak memory (RSS on CPU, torch.cuda.max_memory_allocated on CUDA), as the overhead over plain sampling and, on
  CUDA, as the absolute peak of a guided run.

The last line is machine-readable:
    faithful_step=<ratio> fast_step=<ratio> faithful_run=<ratio> fast_run=<ratio> mem_overhead_mb=<MB>

    .venv/bin/python benchmarks/guidance_overhead.py                 # CPU, 32×32 latent (256 px), 8 steps
    .venv/bin/python benchmarks/guidance_overhead.py --device cuda --latent 64 --dtype fp16 --steps 50
    .venv/bin/python benchmarks/guidance_overhead.py --device cuda --arch sdxl --latent 128 --dtype fp16 --steps 20
    .venv/bin/python benchmarks/guidance_overhead.py --arch flux      # or --arch sd3 (CPU, 32×32 latent)
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from devkit.comfy_env import bootstrap_comfy, register_pack_package

ROOT = Path(__file__).resolve().parent.parent

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

DITS = {
    "flux": ("Flux", {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
                      "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 4,
                      "depth": 19, "depth_single_blocks": 38, "axes_dim": [8, 28, 28], "theta": 10000,
                      "patch_size": 2, "qkv_bias": True}),
    "sd3": ("SD3", {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 8, "adm_in_channels": 2048,
                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                "params": {"in_features": 4096, "out_features": 512}},
                    "pos_embed_max_size": 192, "num_patches": 192 * 192, "qk_norm": "rms",
                    "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []}),
}
"""Narrow DiTs of the real structure: ComfyUI config class and detected configuration."""
CFG = {"flux": 1.0, "sd3": 4.5}
"""The families' usual CFG (Flux.1-dev is guidance-distilled); UNets: 7.5."""
CONDITIONING = {"sd15": (77, 768, None), "sdxl": (77, 2048, 1280), "flux": (256, 4096, 768), "sd3": (154, 4096, 2048)}
"""Per architecture: text tokens, context width and pooled width (None: no pooled vector)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl", *DITS])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the whole-run comparison (half guided)")
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args()


def build_model(arch: str, device: str, dtype: torch.dtype) -> object:
    import comfy.model_patcher
    import comfy.supported_models
    from devkit.tiny_models import SD15_FULL_UNET, SDXL_FULL_UNET, init_weights

    if arch in DITS:
        config_class, unet_config = DITS[arch]
        config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    elif arch == "sdxl":
        config = comfy.supported_models.SDXL(dict(SDXL_FULL_UNET))
    else:
        config = comfy.supported_models.SD15(dict(SD15_FULL_UNET))
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():  # as ComfyUI's loaders create them: inference tensors
        model = config.get_model({}, "")
        init_weights(model.diffusion_model, 0)
        if arch in DITS:
            trained_like_dit(model.diffusion_model)
        model = model.to(device)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=torch.device(device), offload_device=torch.device(device)
    )


def trained_like_dit(diffusion_model: torch.nn.Module) -> None:
    """RMSNorm scales at 1 and SD3's sin-cos position table, as in trained checkpoints (see tiny_dit_models)."""
    for name, param in diffusion_model.named_parameters():
        if name.endswith(".scale") or name.endswith("_norm.weight"):
            param.fill_(1.0)
    embed = getattr(diffusion_model, "pos_embed", None)
    if embed is not None:
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

        table = get_2d_sincos_pos_embed(embed.shape[-1], round(embed.shape[1] ** 0.5))
        embed.copy_(torch.from_numpy(table).reshape(embed.shape).to(embed.dtype))


def hand_made_conditioning(arch: str, generator: torch.Generator) -> list:
    """One conditioning entry of the architecture's shape (SDXL and the DiTs also take a pooled vector)."""
    tokens, width, pooled = CONDITIONING[arch]
    extra = {} if pooled is None else {"pooled_output": torch.randn(1, pooled, generator=generator)}
    return [[torch.randn(1, tokens, width, generator=generator), extra]]


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SamplingBench:
    """A random-weight model, hand-made conditioning and the spec's example bindings, sampled plain or guided."""

    def __init__(self, arch: str, device: str, dtype: str, latent: int) -> None:
        self.device = device
        self.model = build_model(arch, device, DTYPES[dtype])
        generator = torch.Generator().manual_seed(0)
        self.positive = hand_made_conditioning(arch, generator)
        self.negative = hand_made_conditioning(arch, generator)
        self.latent = torch.zeros(1, 16 if arch in DITS else 4, latent, latent)
        self.cfg = CFG.get(arch, 7.5)
        types_module = importlib.import_module("binding_guidance.binding_losses.types")
        inputs = importlib.import_module("binding_guidance.guidance.inputs")
        layout = types_module.TokenLayout(
            bindings=(types_module.TokenBinding((3,), ((2,),)), types_module.TokenBinding((7,), ((6,),))),
            prompt_positions=tuple(range(1, 8)),
            context_length=CONDITIONING[arch][0],
            clip_chunks=arch not in DITS,
        )
        self.bindings = inputs.PromptBindings(prompt="a pink sunflower and a yellow flamingo", layout=layout)

    def config(self, guided_fraction: float, **options: object) -> object:
        """A SynGen GuidanceConfig guiding ``guided_fraction`` of the steps; ``options`` as GuidanceConfig's."""
        inputs = importlib.import_module("binding_guidance.guidance.inputs")
        objectives = importlib.import_module("binding_guidance.binding_losses.objectives")
        objective = objectives.make_objective("syngen", guided_fraction=guided_fraction)
        return inputs.GuidanceConfig(objective=objective, **options)

    def run(self, steps: int, config: object | None = None, sampler_class: type | None = None) -> float:
        """Sample ``steps`` euler steps (guided when ``config`` is given); returns the wall time in seconds."""
        entry = importlib.import_module("binding_guidance.guidance.sample")
        options = {} if sampler_class is None else {"sampler_class": sampler_class}
        self.synchronize()
        started = time.perf_counter()
        entry.guided_sample(self.model, 1, steps, self.cfg, "euler", "normal", self.positive, self.negative,
                            self.latent, self.bindings, config, **options)
        self.synchronize()
        return time.perf_counter() - started

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def start_comfy(device: str) -> None:
    """Import ComfyUI for ``device`` ("cpu" or "cuda") and make the pack importable as ``binding_guidance``."""
    os.environ["BINDING_GUIDANCE_DEVICE"] = device
    bootstrap_comfy()
    register_pack_package()


PER_STEP_STEPS = 4
"""Steps of each per-step comparison (every step guided)."""


def make_runner(bench: SamplingBench) -> object:
    """``run(steps, guided_fraction, stop_early, attention, mode, convolution, checkpointing)`` → seconds."""

    def run(
        steps: int,
        guided_fraction: float | None,
        stop_early: bool = True,
        attention: str = "sdpa",
        mode: str = "faithful",
        convolution: str = "auto",
        checkpointing: bool = True,
    ) -> float:
        if guided_fraction is None:  # "native" here: for reference only, ComfyUI's own pass with oneDNN off
            kernel_setting = torch.backends.mkldnn.flags(enabled=False) if convolution == "native" else nullcontext()
            with kernel_setting:
                return bench.run(steps)
        options = {
            "stop_forward_early": stop_early,
            "guidance_attention": attention,
            "mode": mode,
            "cpu_convolution": convolution,
            "dit_checkpointing": checkpointing,
        }
        return bench.run(steps, bench.config(guided_fraction, **options))

    return run


def variants_for(args: argparse.Namespace) -> dict[str, tuple]:
    """Each measured configuration, as the arguments of the runner."""
    n = PER_STEP_STEPS
    variants: dict[str, tuple] = {
        "plain_steps": (n, None),
        "guided_steps": (n, 1.0),
        "guided_full_forward": (n, 1.0, False),
        "guided_comfy_attention": (n, 1.0, True, "comfy"),
        "fast_steps": (n, 1.0, True, "sdpa", "fast"),
        "guided_default_convolution": (n, 1.0, True, "sdpa", "faithful", "default"),
        "fast_default_convolution": (n, 1.0, True, "sdpa", "fast", "default"),
        "plain_native_convolution": (n, None, True, "sdpa", "faithful", "native"),
        "plain_run": (args.steps, None),
        "guided_run": (args.steps, 0.5),
        "fast_run": (args.steps, 0.5, True, "sdpa", "fast"),
    }
    dit = args.arch in DITS
    if args.device != "cpu" or dit:  # the convolution choice only exists on CPU; DiT blocks have no convolutions
        del variants["guided_default_convolution"], variants["fast_default_convolution"]
        del variants["plain_native_convolution"]
    if dit:
        variants["guided_no_checkpointing"] = (n, 1.0, True, "sdpa", "faithful", "auto", False)
    return variants


def measure(args: argparse.Namespace, bench: SamplingBench, variants: dict[str, tuple]) -> dict[str, float]:
    """Seconds per variant (best of the repeats), plus the peaks and the one-time release of the weights."""
    run = make_runner(bench)
    run(2, None)  # warm-up (model load, kernels)
    plain_peak = peak_memory_mb(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run(PER_STEP_STEPS, None)
        plain_peak = peak_memory_mb(args.device)
        torch.cuda.reset_peak_memory_stats()
    release = importlib.import_module("binding_guidance.guidance.inference_tensors").release_inference_tensors
    started = time.perf_counter()
    release(bench.model.model)  # what the first guided run on a freshly loaded model does once
    release_time = time.perf_counter() - started
    # Peak memory of the default configurations first (RSS peaks only grow): faithful and fast, early stop on.
    times: dict[str, float] = {name: math.inf for name in variants}
    for name in ("guided_steps", "fast_steps"):
        times[name] = run(*variants[name])
    guided_peak = peak_memory_mb(args.device)
    guided_reserved = torch.cuda.max_memory_reserved() / 2**30 if args.device == "cuda" else 0.0
    # Interleaved repeats, best of each: slow drift of a shared machine hits every variant alike.
    for _ in range(args.repeats):
        for name, run_args in variants.items():
            times[name] = min(times[name], run(*run_args))
    return {**times, "plain_peak": plain_peak, "guided_peak": guided_peak, "guided_reserved": guided_reserved,
            "release": release_time}


def cpu_kernel_lines(times: dict[str, float]) -> list[str]:
    """The UNet-on-CPU lines: the convolution kernels of the guidance pass against PyTorch's defaults."""
    n, plain = PER_STEP_STEPS, times["plain_steps"]
    kernel_timings = importlib.import_module("binding_guidance.guidance.sampler").BindingGuidedSampler.kernel_timings
    guided, fast = times["guided_default_convolution"], times["fast_default_convolution"]
    native = times["plain_native_convolution"]
    return [
        f"convolution kernels of the guidance pass timed per shape once "
        f"({kernel_timings.seconds:.2f} s, {kernel_timings.native_share()}); "
        f"with PyTorch's default kernel instead: faithful step {guided / n:.3f} s (ratio {guided / plain:.3f}), "
        f"fast step {fast / n:.3f} s (ratio {fast / plain:.3f})",
        f"for reference, not done by the pack: a plain step with oneDNN off altogether (PyTorch's native "
        f"convolution in ComfyUI's own pass) {native / n:.3f} s (ratio {native / plain:.3f})",
    ]


def report(args: argparse.Namespace, bench: SamplingBench, times: dict[str, float]) -> list[str]:
    """The printed lines; the last one is machine-readable."""
    n = PER_STEP_STEPS
    plain_steps, guided_steps, fast_steps = times["plain_steps"], times["guided_steps"], times["fast_steps"]
    full_forward, comfy_attention = times["guided_full_forward"], times["guided_comfy_attention"]
    plain_run, guided_run, fast_run_time = times["plain_run"], times["guided_run"], times["fast_run"]
    faithful_step, fast_step = guided_steps / plain_steps, fast_steps / plain_steps
    faithful_run, fast_run = guided_run / plain_run, fast_run_time / plain_run
    plain_peak, guided_peak = times["plain_peak"], times["guided_peak"]
    params = sum(p.numel() for p in bench.model.model.parameters()) / 1e6
    memory_kind = "RSS" if args.device == "cpu" else "CUDA allocated"
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [
        f"device={device_name} arch={args.arch} dtype={args.dtype} latent={args.latent}x{args.latent} "
        f"params={params:.0f}M torch_threads={torch.get_num_threads()}",
        f"one-time release of the inference-mode weights (first guided run on a loaded model): "
        f"{times['release']:.2f} s",
        f"plain step {plain_steps / n:.3f} s; guided step {guided_steps / n:.3f} s; "
        f"guided step with the full guidance forward {full_forward / n:.3f} s; "
        f"with ComfyUI's attention kernel in the guidance pass {comfy_attention / n:.3f} s",
        f"fast-mode step {fast_steps / n:.3f} s",
    ]
    if "guided_no_checkpointing" in times:
        no_checkpointing = times["guided_no_checkpointing"]
        lines.append(f"guided step without dit_checkpointing {no_checkpointing / n:.3f} s "
                     f"(ratio {no_checkpointing / plain_steps:.3f})")
    if "plain_native_convolution" in times:
        lines.extend(cpu_kernel_lines(times))
    cuda_peak = (f" (guided peak {guided_peak / 1024:.2f} GiB; reserved {times['guided_reserved']:.2f} GiB)"
                 if args.device == "cuda" else "")
    lines += [
        f"per-step ratio faithful {faithful_step:.3f} (full forward: {full_forward / plain_steps:.3f}), "
        f"fast {fast_step:.3f}",
        f"{args.steps}-step run, {math.ceil(args.steps / 2)} guided: plain {plain_run:.2f} s, "
        f"faithful {guided_run:.2f} s (ratio {faithful_run:.3f}), fast {fast_run_time:.2f} s (ratio {fast_run:.3f})",
        f"peak memory ({memory_kind}): plain {plain_peak:.0f} MB, after faithful and fast runs {guided_peak:.0f} MB"
        + cuda_peak,
        f"faithful_step={faithful_step:.3f} fast_step={fast_step:.3f} faithful_run={faithful_run:.3f} "
        f"fast_run={fast_run:.3f} mem_overhead_mb={guided_peak - plain_peak:.0f}",
    ]
    return lines


def main() -> None:
    args = parse_args()
    start_comfy(args.device)
    bench = SamplingBench(args.arch, args.device, args.dtype, args.latent)
    times = measure(args, bench, variants_for(args))
    print("\n".join(report(args, bench, times)))


if __name__ == "__main__":
    main()
