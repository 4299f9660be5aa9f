"""How much binding loss fast mode removes compared with faithful mode, on the same seeds.

For each prompt and seed, one sampling run per mode (plain, faithful, fast) on the same model. At every step the
binding loss is probed at the latent that the step's model call actually denoises (after any update), with one
extra no-grad guidance forward that changes nothing. The loss removed by a mode is its drop against the plain run
at the same step, relative to the plain loss:
- ``during``: mean over the guided steps after the first (step 0 is identical in every mode);
- ``end``: at the first unguided step, where every update of both modes has landed.
Fast mode is kept when its removal is at least 80% of faithful mode's (issue #7).

    .venv/bin/python benchmarks/fast_mode_quality.py                    # tiny random SD1.5 checkpoint, CPU
    .venv/bin/python benchmarks/fast_mode_quality.py --checkpoint path/to/sd15.safetensors --latent 64

The last line is machine-readable: ``fast_vs_faithful_during=<ratio> fast_vs_faithful_end=<ratio>``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
from pathlib import Path
from typing import Any

import torch
from devkit.comfy_env import bootstrap_comfy, register_pack_package

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = (
    "a pink sunflower and a yellow flamingo",
    "a red cube on top of a blue sphere",
    "a black cat and a white dog",
    "a wooden chair next to a glass table",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint file; default: the tests' tiny random SD1.5 checkpoint")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--method", default="syngen")
    parser.add_argument("--step-size", type=float, default=20.0)
    return parser.parse_args()


def tiny_checkpoint() -> Path:
    from devkit.tiny_models import build_sd15_tiny_checkpoint

    path = ROOT / ".cache" / "test-models" / "sd15_tiny_v1.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_sd15_tiny_checkpoint(path)
    return path


def removed(plain: dict[int, float], probes: dict[int, float], steps: range) -> float:
    """Mean loss drop against the plain run over ``steps``, relative to the plain loss's magnitude."""
    return statistics.fmean((plain[i] - probes[i]) / abs(plain[i]) for i in steps)


def main() -> None:
    args = parse_args()
    bootstrap_comfy()
    register_pack_package()
    import comfy.sample
    import comfy.samplers
    import comfy.sd

    sampler_module = importlib.import_module("binding_guidance.guidance.sampler")
    inputs = importlib.import_module("binding_guidance.guidance.inputs")
    objectives = importlib.import_module("binding_guidance.binding_losses.objectives")
    parse_node = importlib.import_module("binding_guidance.nodes.parse_node")

    class ProbedRun(sampler_module.GuidanceRun):
        """A GuidanceRun that also measures the loss at every step's denoised latent (benchmark only)."""

        latest: ProbedRun | None = None

        def __init__(self, *run_args: Any) -> None:
            super().__init__(*run_args)
            self.probes: dict[int, float] = {}
            ProbedRun.latest = self

        def intercepts(self, step: int) -> bool:
            return True

        def before_call(self, x: Any, sigma: Any, step: int, denoise_mask: Any, model_options: dict) -> dict:
            call_options = super().before_call(x, sigma, step, denoise_mask, model_options)
            with torch.inference_mode(False), torch.no_grad():
                result = self._loss(x.detach().clone().float(), sigma.detach().clone(), model_options, step)
                self.probes[step] = float(result.total.float().sum())
            return call_options

    class ProbedSampler(sampler_module.BindingGuidedSampler):
        run_class = ProbedRun

    path = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint()
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clipvision=False)
    guided_steps = round(0.5 * args.steps)
    latent = torch.zeros(1, 4, args.latent, args.latent)

    def run(bindings: Any, positive: Any, negative: Any, seed: int, mode: str, step_size: float) -> dict[int, float]:
        config = inputs.GuidanceConfig(
            objective=objectives.make_objective(args.method, scale_factor=step_size, guided_fraction=0.5), mode=mode
        )
        with torch.inference_mode():
            sigmas = comfy.samplers.KSampler(
                model, args.steps, model.load_device, args.sampler, "normal", 1.0, model_options=model.model_options
            ).sigmas
            sampler = ProbedSampler(comfy.samplers.sampler_object(args.sampler), bindings, config)
            noise = comfy.sample.prepare_noise(latent, seed)
            comfy.sample.sample_custom(
                model, noise, 7.5, sampler, sigmas, positive, negative, latent, disable_pbar=True, seed=seed
            )
        return ProbedRun.latest.probes

    rows = []
    for prompt in PROMPTS:
        with torch.inference_mode():
            bindings = parse_node.parse_prompt_bindings(clip, prompt)[0]
            positive = [[clip.encode_from_tokens(clip.tokenize(prompt)), {}]]
            negative = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
        for seed in range(args.seeds):
            plain = run(bindings, positive, negative, seed, "faithful", 0.0)
            faithful = run(bindings, positive, negative, seed, "faithful", args.step_size)
            fast = run(bindings, positive, negative, seed, "fast", args.step_size)

            during = range(1, guided_steps)
            end = range(guided_steps, guided_steps + 1)
            row = (
                removed(plain, faithful, during),
                removed(plain, fast, during),
                removed(plain, faithful, end),
                removed(plain, fast, end),
            )
            rows.append(row)
            print(
                f"{prompt!r} seed {seed}: loss removed during guidance faithful {row[0]:.3f} fast {row[1]:.3f}; "
                f"at step {guided_steps} faithful {row[2]:.3f} fast {row[3]:.3f}",
                flush=True,
            )
    mean = [statistics.fmean(row[k] for row in rows) for k in range(4)]
    print(
        f"{args.method}, {args.sampler}, {args.steps} steps ({guided_steps} guided), {len(rows)} runs per mode: "
        f"mean relative loss removed during guidance faithful {mean[0]:.3f} fast {mean[1]:.3f}; "
        f"at step {guided_steps} faithful {mean[2]:.3f} fast {mean[3]:.3f}"
    )
    print(f"fast_vs_faithful_during={mean[1] / mean[0]:.3f} fast_vs_faithful_end={mean[3] / mean[2]:.3f}")


if __name__ == "__main__":
    main()
