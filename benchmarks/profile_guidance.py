"""Where a guided step's time goes: torch.profiler over plain, faithful and fast sampling of the same model.

For each variant it prints the wall time per step, the device's busy time per step (the sum of its kernels'
times: far under the wall time means the step is bound by Python and kernel launches, not by the GPU), the number
of kernels launched per step, and the operators with the most self time.

    .venv/bin/python benchmarks/profile_guidance.py --device cuda --dtype fp16 --latent 64
    .venv/bin/python benchmarks/profile_guidance.py --latent 16 --rows 10         # CPU
"""

from __future__ import annotations

import argparse
import os

from guidance_overhead import SamplingBench, start_comfy
from torch.profiler import ProfilerActivity, profile


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=18, help="operators listed per variant")
    parser.add_argument("--trace", help="folder for Chrome traces (one .json per variant)")
    return parser.parse_args()


def _self_device_time(event: object) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def main() -> None:
    args = parse_args()
    start_comfy(args.device)
    bench = SamplingBench(args.arch, args.device, args.dtype, args.latent)
    variants = {
        "plain": None,
        "faithful": bench.config(1.0),
        "fast": bench.config(1.0, mode="fast"),
    }
    for config in variants.values():  # warm-up: model load, weight release, kernel selection
        bench.run(2, config)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort_key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    summary = []
    for name, config in variants.items():
        with profile(activities=activities) as prof:
            wall = bench.run(args.steps, config)
        events = prof.key_averages()
        busy = sum(_self_device_time(event) for event in events) / 1e3 / args.steps
        kernels = sum(event.count for event in events if _self_device_time(event) > 0 and not event.is_legacy)
        line = (
            f"{name}: wall {wall / args.steps * 1e3:.1f} ms/step (under the profiler), device busy {busy:.1f} ms/step, "
            f"{kernels / args.steps:.0f} device ops/step"
        )
        summary.append(line)
        print(f"===== {line}")
        print(events.table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=60))
        if args.trace:
            os.makedirs(args.trace, exist_ok=True)
            prof.export_chrome_trace(os.path.join(args.trace, f"{args.arch}_{name}.json"))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
