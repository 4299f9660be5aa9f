"""How close the latent gradient of a half-precision UNet is to the fp32 one (the guidance backward in fp16/bf16).

ComfyUI runs the UNet in the model's dtype (fp16 on most GPUs); the pack computes the loss and the latent update in
fp32, but the backward through the UNet runs in the model's dtype. Small losses can underflow there. This builds
the same random-weight UNet (real SD1.5 or SDXL width) in fp32, fp16 and bf16, takes the first guided step's
∇ₓL through the real guided sampler at the same latent and sigma, and prints, for each half-precision dtype:
the loss's relative difference, the gradient's cosine similarity and relative L2 error against fp32, and the
share of gradient entries that are exactly zero where fp32's are not (underflow).

    .venv/bin/python benchmarks/gradient_precision.py --device cuda --latent 64
    .venv/bin/python benchmarks/gradient_precision.py --latent 16 --dtypes fp32 bf16     # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import importlib
from typing import Any, ClassVar

import torch
from guidance_overhead import DTYPES, SamplingBench, start_comfy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=list(DTYPES))
    return parser.parse_args()


def first_step_gradient(args: argparse.Namespace, dtype: str) -> tuple[float, torch.Tensor]:
    """(loss, ∇ₓL) of the first guided step with the UNet in ``dtype``; fp32 on the CPU."""
    sampler_module = importlib.import_module("binding_guidance.guidance.sampler")
    probes: list[tuple[float, torch.Tensor]] = []

    class ProbedRun(sampler_module.BindingGuidedSampler.run_classes["faithful"]):
        def loss_and_grad(
            self, latent: torch.Tensor, sigma: torch.Tensor, model_options: dict, step: int
        ) -> tuple[Any, torch.Tensor, float]:
            result, grad, loss = super().loss_and_grad(latent, sigma, model_options, step)
            probes.append((loss, grad.detach().float().cpu()))
            return result, grad, loss

    class ProbedSampler(sampler_module.BindingGuidedSampler):
        run_classes: ClassVar[dict] = {"faithful": ProbedRun}

    bench = SamplingBench(args.arch, args.device, dtype, args.latent)
    bench.run(2, bench.config(1.0), sampler_class=ProbedSampler)
    del bench
    gc.collect()
    if args.device == "cuda":
        import comfy.model_management

        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
    return probes[0]


def main() -> None:
    args = parse_args()
    start_comfy(args.device)
    results = {name: first_step_gradient(args, name) for name in args.dtypes}
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device={device} arch={args.arch} latent={args.latent}x{args.latent} method=syngen")
    reference_loss, reference = results.get("fp32", next(iter(results.values())))
    print(f"fp32: loss {reference_loss:.6e}, |grad| {reference.norm():.3e}, max |grad| {reference.abs().max():.3e}")
    summary = []
    for name, (loss, grad) in results.items():
        if name == "fp32":
            continue
        cosine = float(torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0))
        rel_l2 = float((grad - reference).norm() / reference.norm())
        lost = float(((grad == 0) & (reference != 0)).float().mean())
        print(
            f"{name}: loss {loss:.6e} (rel diff {abs(loss - reference_loss) / abs(reference_loss):.2e}), "
            f"grad cosine {cosine:.5f}, rel L2 error {rel_l2:.3e}, zeroed entries {lost:.2%}"
        )
        summary.append(f"{name}_cosine={cosine:.5f} {name}_rel_l2={rel_l2:.3e} {name}_zeroed={lost:.4f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
