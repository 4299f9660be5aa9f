"""oneDNN against PyTorch's native kernel for the batch-of-one convolutions of the guidance pass, per shape (CPU).

The shapes are the 3×3 convolutions of an SD1.5-width UNet (320 channels, multipliers 1, 2, 4, 4) at a latent of
``--side`` (32 = 256 px), batch 1. For each, the forward and the input-gradient backward are timed on both kernels
through the pack's own routed convolution (``kernels.cpu_convolution``), best of ``--repeats``. The last line
summarises the native/oneDNN time ratio over the deep low-resolution shapes (latent/4 and latent/8: 8×8 and 4×4 at
256 px) and over the full-resolution ones.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_kernels.py
"""

from __future__ import annotations

import argparse
import importlib

import torch
from devkit.comfy_env import register_pack_package

# (in channels, out channels, latent downsampling factor) of the UNet's 3×3 convolutions, one per distinct shape.
SD15_SHAPES = [
    (320, 320, 1), (640, 320, 1), (960, 320, 1),
    (320, 640, 2), (640, 640, 2), (960, 640, 2), (1280, 640, 2), (1920, 640, 2),
    (640, 1280, 4), (1280, 1280, 4), (1920, 1280, 4), (2560, 1280, 4),
    (1280, 1280, 8), (2560, 1280, 8),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    register_pack_package()
    kernels = importlib.import_module("binding_guidance.kernels.cpu_convolution")
    params = kernels.ConvolutionParams((1, 1), (1, 1), (1, 1), 1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, latent {args.side}x{args.side}, batch 1")
    print("shape (cin→cout @ side)   oneDNN fwd/bwd ms   native fwd/bwd ms   native/oneDNN fwd, bwd")
    ratios: dict[str, list[float]] = {"deep": [], "wide": []}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode(False):
        for cin, cout, factor in SD15_SHAPES:
            side = max(1, args.side // factor)
            x = torch.randn(1, cin, side, side, generator=generator)
            weight = torch.randn(cout, cin, 3, 3, generator=generator) * 0.02
            bias = torch.randn(cout, generator=generator)
            timed = {}
            for onednn in (True, False):
                runs = [kernels._seconds_per_direction(onednn, x, weight, bias, params) for _ in range(args.repeats)]
                timed[onednn] = tuple(min(run[i] for run in runs) for i in range(2))
            forward, backward = (timed[False][i] / timed[True][i] for i in range(2))
            group = "deep" if factor >= 4 else "wide" if factor == 1 else None
            if group is not None:
                ratios[group] += [forward, backward]
            print(
                f"{cin:>4}→{cout:<4} @ {side:>2}x{side:<2}          "
                f"{timed[True][0] * 1e3:7.1f} / {timed[True][1] * 1e3:7.1f}   "
                f"{timed[False][0] * 1e3:7.1f} / {timed[False][1] * 1e3:7.1f}   {forward:5.2f}, {backward:5.2f}"
            )
    print(
        "native/oneDNN time: deep layers (latent/4, latent/8) "
        f"{min(ratios['deep']):.2f}–{max(ratios['deep']):.2f}, full-resolution layers "
        f"{min(ratios['wide']):.2f}–{max(ratios['wide']):.2f}"
    )


if __name__ == "__main__":
    main()
