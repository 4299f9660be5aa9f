"""Fuzz Parse Bindings, Binding Loss Config and the guided sampler at scale (issue #16).

The same generators (devkit.fuzz_inputs) and checks (devkit.fuzz_checks) as the derandomized tests, over
many more inputs:

- ``--prompts`` generated prompts (default 10,000), shared out as ``fuzz_inputs.CAMPAIGNS``: robust parser with the
  SD1 and SDXL tokenizers, ~500-word prompts, faithful + fallback parsers, and Parse Bindings' ``override`` input.
  Every prompt goes through the pipeline (strip → parse → token table → align) and must parse consistently
  (``fuzz_checks.check_prompt``) or raise the documented PromptError;
- every ``--sample-every``-th prompt (default 50; the guided sampler costs about 2 s a prompt on the tiny model,
  so all 10,000 would take hours on a CPU) also goes through the node classes: Parse Bindings (with its T-SAM text
  self-attention pass), CLIP Text Encode and the Binding-Guided KSampler on the tiny SD1 model, 2 guided steps on a
  16×16 latent, each with the next method / guidance mode / sampler of ``fuzz_inputs.guided_variant``;
- ``--configs`` generated Binding Loss Config inputs (default 10,000) with fuzzed ``advanced`` text: each builds a
  config or is refused with a ValueError naming the input (``fuzz_checks.check_config``). Configs built with a
  non-finite hyperparameter are counted (``advanced_nonfinite``): #16 wants those refused at validation. Each
  case also runs as if ``advanced`` were linked from another node (no validation, ``configure`` alone):
  ``linked_crashes`` / ``linked_inconsistent``, not part of ``crashes`` / ``inconsistent``.

Prints each failure (the input, truncated) and, last, one line:

    fuzz: prompts= parsed= input_errors= crashes= inconsistent= advanced= override= sampled= sample_every= ...

``crashes`` counts exceptions of any other type, ``inconsistent`` broken invariants, over prompts, configs and
sampled runs together. Seeded (``--seed``), so a run repeats exactly.

    .venv/bin/python benchmarks/fuzz.py                       # 10,000 prompts, 10,000 configs, every 50th sampled
    .venv/bin/python benchmarks/fuzz.py --prompts 500 --configs 500 --sample-every 100
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent

from devkit.comfy_env import bootstrap_comfy, load_pack_into_comfy, register_pack_package  # noqa: E402

register_pack_package()
bootstrap_comfy()

from binding_guidance.parsers import PromptError  # noqa: E402
from devkit import fuzz_checks as checks  # noqa: E402
from devkit import fuzz_inputs as inputs  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10_000, help="generated prompts in all (default 10,000)")
    parser.add_argument("--configs", type=int, default=10_000, help="generated Binding Loss Config inputs")
    parser.add_argument("--sample-every", type=int, default=50,
                        help="send every Nth prompt through the guided sampler too (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


SEVERITY = ("crash", "inconsistent", checks.INPUT_ERROR, checks.PARSED)
"""A prompt's outcome over its parsers is the worst of theirs."""
COUNTED = ("prompt", "sampled", "advanced")


class Tally:
    """Outcome counts, and the first few failures of each kind with their inputs."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []

    def run(self, area: str, call: Callable[[], str], shown: object) -> str:
        """Run one check; count its outcome under ``area``; a broken invariant or an exception is a failure."""
        try:
            outcome = call()
        except checks.InconsistentError as error:
            outcome, detail = "inconsistent", str(error)
        except PromptError as error:  # the documented error, but for input the docs say parses
            outcome, detail = "inconsistent", f"PromptError: {error}"
        except Exception as error:  # counting crashes is the point
            outcome, detail = "crash", f"{type(error).__name__}: {error}"
        else:
            detail = ""
        self.counts[f"{area}:{outcome}"] += 1
        if detail and len(self.failures) < 200:
            self.failures.append(f"[{area}] {outcome}: {detail[:300]}\n    input: {shown!r:.400}")
        return outcome

    def total(self, outcome: str, areas: tuple[str, ...] = COUNTED) -> int:
        return sum(n for key, n in self.counts.items() if key.endswith(f":{outcome}") and key.split(":")[0] in areas)


def hypothesis_run(strategy: Any, examples: int, run_seed: int, body: Callable[[Any], None]) -> None:
    """Call ``body`` on ``examples`` generated values (generation only: nothing fails, so nothing shrinks)."""
    if examples <= 0:
        return

    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(run_seed)
    @given(strategy)
    def run(value: Any) -> None:
        body(value)

    run()


def load_guided_rig() -> checks.GuidedRig:
    import torch
    from devkit.tiny_models import cached_tiny_checkpoint

    checkpoint = cached_tiny_checkpoint("sd15")
    nodes, pack = load_pack_into_comfy(checkpoint.parent)
    with torch.inference_mode():
        model, clip, _ = nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(checkpoint.name)[:3]
    return checks.GuidedRig.load(nodes, pack, model, clip)


def fuzz_prompts(args: argparse.Namespace, tally: Tally, rig: checks.GuidedRig | None) -> None:
    clips = checks.tokenizer_clips()
    counter = {"prompt": 0, "sampled": 0}
    for number, campaign in enumerate(inputs.CAMPAIGNS):
        size = inputs.campaign_sizes(args.prompts)[campaign.name]
        started = time.perf_counter()

        def body(example: Any, campaign: inputs.Campaign = campaign) -> None:
            counter["prompt"] += 1
            prompt, override, valid = example if campaign.modes == ("override",) else (example, "", False)
            clip = clips[campaign.tokenizer]
            outcomes = []
            for mode in campaign.modes:
                if mode == "override":
                    call = lambda: checks.check_override(prompt, override, valid, clip)  # noqa: E731
                else:
                    call = lambda mode=mode: checks.check_prompt(prompt, clip, checks.parser_for(mode))  # noqa: E731
                outcomes.append(tally.run("parse", call, (campaign.name, mode, prompt, override)))
            tally.counts[f"campaign:{campaign.name}"] += 1
            tally.counts["prompt:" + min(outcomes, key=SEVERITY.index)] += 1
            if rig is not None and args.sample_every and counter["prompt"] % args.sample_every == 0:
                variant = inputs.guided_variant(counter["sampled"])
                counter["sampled"] += 1
                tally.run("sampled", lambda: checks.check_guided(rig, prompt, variant, mode=campaign.modes[0],
                                                                 override=override), (variant, prompt, override))

        hypothesis_run(inputs.CAMPAIGN_STRATEGIES[campaign.name], size, args.seed * 100 + number, body)
        print(f"{campaign.name}: {tally.counts[f'campaign:{campaign.name}']} prompts in "
              f"{time.perf_counter() - started:.0f} s; so far crashes={tally.total('crash')} "
              f"inconsistent={tally.total('inconsistent')}", flush=True)


def fuzz_configs(args: argparse.Namespace, tally: Tally, node_class: type) -> None:
    started = time.perf_counter()

    def body(case: inputs.ConfigCase) -> None:
        def call(linked: bool) -> str:
            outcome, nonfinite = checks.check_config(node_class, case.inputs(), linked=linked)
            if nonfinite and not linked:
                tally.counts["advanced_nonfinite"] += 1
                if tally.counts["advanced_nonfinite"] <= 5:
                    tally.failures.append(f"[advanced] built with non-finite {nonfinite}\n    input: {case!r:.300}")
            return outcome

        tally.run("advanced", lambda: call(False), case)
        tally.run("linked", lambda: call(True), case)

    hypothesis_run(inputs.config_cases, args.configs, args.seed * 100 + 99, body)
    print(f"advanced: {args.configs} configs in {time.perf_counter() - started:.0f} s", flush=True)


def stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    rig = load_guided_rig()
    tally = Tally()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        fuzz_prompts(args, tally, rig if args.sample_every else None)
        fuzz_configs(args, tally, rig.nodes["BindingLossConfig"])
    except KeyboardInterrupt:  # stopped early: report what ran
        print("stopped before the end: the figures below cover the inputs that ran", flush=True)
    for failure in tally.failures:
        print(failure)
    counts = tally.counts
    prompts = sum(counts[f"campaign:{c.name}"] for c in inputs.CAMPAIGNS)
    advanced = sum(n for key, n in counts.items() if key.startswith("advanced:"))
    sampled = sum(n for key, n in counts.items() if key.startswith("sampled:"))
    print(f"outcomes: {dict(sorted((k, v) for k, v in counts.items() if ':' in k))}")
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    print(f"fuzz: prompts={prompts} parsed={tally.total(checks.PARSED, ('prompt',))} "
          f"input_errors={tally.total(checks.INPUT_ERROR, ('prompt',))} crashes={tally.total('crash')} "
          f"inconsistent={tally.total('inconsistent')} advanced={advanced} "
          f"override={counts['campaign:override']} sampled={sampled} "
          f"sample_every={args.sample_every} advanced_valid={counts['advanced:' + checks.VALID_CONFIG]} "
          f"advanced_refused={counts['advanced:' + checks.REFUSED]} advanced_nonfinite={counts['advanced_nonfinite']} "
          f"linked_crashes={counts['linked:crash']} linked_inconsistent={counts['linked:inconsistent']}")


if __name__ == "__main__":
    main()
