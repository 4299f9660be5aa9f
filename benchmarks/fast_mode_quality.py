"""How much binding loss fast mode removes compared with faithful mode, on the same seeds.

For each prompt and seed: one plain sampling run (faithful mode at step size 0) and, at each step size, one
faithful and one fast run, all from the same noise. At every step the binding loss is probed at the latent that
the step's model call denoises (after any update), with one extra no-grad guidance forward that changes nothing.
A mode's removal at a step is the plain run's loss minus its own there.

- ``guided steps``: fast mode's removal summed over every guided step, step 0 included, divided by faithful mode's
  removal summed over the same steps. At step 0 faithful mode has already moved the latent and fast mode has not;
  that lag is part of what fast mode gives up, so it counts.
- ``first unguided step``: the same ratio at the step after the last guided one, where every update has landed.

Both are reported at the method's reference step size and at a stress step size, per prompt and seed, then as
the mean, standard deviation, minimum and maximum over the runs.

    .venv/bin/python benchmarks/fast_mode_quality.py                    # tiny random SD1.5 checkpoint, CPU
    .venv/bin/python benchmarks/fast_mode_quality.py --checkpoint path/to/sd15.safetensors --latent 64

The last line is machine-readable: ``fast_vs_faithful_guided=<mean at the reference step size>
fast_vs_faithful_guided_stress=<mean at the stress step size> fast_vs_faithful_unguided=<...> ...``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
from pathlib import Path
from typing import Any, ClassVar

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
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--method", default="syngen")
    parser.add_argument("--stress-step-size", type=float, default=2000.0,
                        help="a large step size; on the tiny random model the reference step barely moves the loss")
    return parser.parse_args()


def tiny_checkpoint() -> Path:
    from devkit.tiny_models import build_sd15_tiny_checkpoint

    path = ROOT / ".cache" / "test-models" / "sd15_tiny_v1.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_sd15_tiny_checkpoint(path)
    return path


def removal(plain: dict[int, float], probes: dict[int, float], steps: range) -> float:
    """Loss removed against the plain run, summed over ``steps``."""
    return sum(plain[i] - probes[i] for i in steps)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"mean {statistics.fmean(values):.3f}, sd {sd:.3f}, min {min(values):.3f}, max {max(values):.3f}"


def probed_sampler_class() -> type:
    """A BindingGuidedSampler whose run also measures the loss at every step's denoised latent (benchmark only)."""
    sampler_module = importlib.import_module("binding_guidance.guidance.sampler")

    latest_probes: dict[int, float] = {}

    def probed(run_class: type) -> type:
        class ProbedRun(run_class):
            """A guidance run that also measures the loss at every step's denoised latent (benchmark only)."""

            def __init__(self, *run_args: Any) -> None:
                super().__init__(*run_args)
                latest_probes.clear()
                self.probes = latest_probes

            def intercepts(self, step: int) -> bool:
                return True

            def before_call(self, x: Any, sigma: Any, step: int, denoise_mask: Any, model_options: dict) -> dict:
                call_options = super().before_call(x, sigma, step, denoise_mask, model_options)
                with torch.inference_mode(False), torch.no_grad():
                    latent, sigma_copy = x.detach().clone().float(), sigma.detach().clone()
                    result = self.guidance_loss(latent, sigma_copy, model_options, step)
                    self.probes[step] = float(result.total.float().sum())
                return call_options

        return ProbedRun

    class ProbedSampler(sampler_module.BindingGuidedSampler):
        latest_probes: ClassVar[dict[int, float]] = latest_probes
        run_classes: ClassVar[dict] = {
            mode: probed(cls) for mode, cls in sampler_module.BindingGuidedSampler.run_classes.items()
        }

    return ProbedSampler


def main() -> None:
    args = parse_args()
    bootstrap_comfy()
    register_pack_package()
    import comfy.sd

    entry = importlib.import_module("binding_guidance.guidance.sample")
    inputs = importlib.import_module("binding_guidance.guidance.inputs")
    objectives = importlib.import_module("binding_guidance.binding_losses.objectives")
    parse_node = importlib.import_module("binding_guidance.nodes.parse_node")
    sampler_class = probed_sampler_class()

    path = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint()
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clipvision=False)
    reference = float(objectives.default_params(args.method)["scale_factor"])
    step_sizes = {"reference": reference, "stress": args.stress_step_size}
    guided_steps = round(0.5 * args.steps)
    latent = torch.zeros(1, 4, args.latent, args.latent)

    def run(bindings: Any, positive: Any, negative: Any, seed: int, mode: str, step_size: float) -> dict[int, float]:
        objective = objectives.make_objective(args.method, scale_factor=step_size, guided_fraction=0.5)
        config = inputs.GuidanceConfig(objective=objective, mode=mode)
        entry.guided_sample(model, seed, args.steps, 7.5, args.sampler, "normal", positive, negative, latent,
                            bindings, config, sampler_class=sampler_class)
        return dict(sampler_class.latest_probes)

    guided, unguided = range(guided_steps), range(guided_steps, guided_steps + 1)
    ratios: dict[str, dict[str, list[float]]] = {name: {"guided": [], "unguided": []} for name in step_sizes}
    for prompt in PROMPTS[: args.prompts]:
        with torch.inference_mode():
            bindings = parse_node.parse_prompt_bindings(clip, prompt)[0]
            positive = [[clip.encode_from_tokens(clip.tokenize(prompt)), {}]]
            negative = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
        for seed in range(args.seeds):
            plain = run(bindings, positive, negative, seed, "faithful", 0.0)
            for name, step_size in step_sizes.items():
                faithful = run(bindings, positive, negative, seed, "faithful", step_size)
                fast = run(bindings, positive, negative, seed, "fast", step_size)
                line = []
                for span, steps in (("guided", guided), ("unguided", unguided)):
                    by_faithful, by_fast = removal(plain, faithful, steps), removal(plain, fast, steps)
                    ratios[name][span].append(by_fast / by_faithful)
                    line.append(f"{span}: faithful removes {by_faithful:.3g}, fast {by_fast:.3g} "
                                f"(ratio {by_fast / by_faithful:.3f})")
                print(f"{prompt!r} seed {seed}, step size {step_size:g} ({name}); plain loss at step 0 "
                      f"{plain[0]:.4g}; " + "; ".join(line), flush=True)
    runs = len(ratios["reference"]["guided"])
    print(f"{args.method}, {args.sampler}, {args.steps} steps ({guided_steps} guided, steps 0-{guided_steps - 1}), "
          f"CFG 7.5, {args.latent}x{args.latent} latent, {runs} runs per mode and step size. "
          "Fast mode's loss removal as a fraction of faithful mode's:")
    for name, step_size in step_sizes.items():
        print(f"  step size {step_size:g} ({name}): over all guided steps {spread(ratios[name]['guided'])}; "
              f"at step {guided_steps} (first unguided) {spread(ratios[name]['unguided'])}")
    print(" ".join(
        f"fast_vs_faithful_{span}{'' if name == 'reference' else '_' + name}="
        f"{statistics.fmean(ratios[name][span]):.3f}"
        for name in step_sizes for span in ("guided", "unguided")
    ))


if __name__ == "__main__":
    main()
