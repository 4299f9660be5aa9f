"""The jobs of ``benchmarks/soak.py``: API-format graphs for the tiny SD1 checkpoint, and the order they run in.

Every LATENT and IMAGE a job produces goes into a ``SoakProbe`` node (``soak_probe.py``), which reports non-finite
elements and a hash of the bytes in the history. A job is a :class:`Job`: good jobs must succeed; ``bad`` jobs
carry an input the pack must refuse (at validation, or with its own error naming the input: ``culprits``);
``interrupt`` jobs are long and get a POST /interrupt while they run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devkit.workflow_tools import FAST_ADVANCED

SIZE, STEPS, SEED = 128, 4, 16
PROMPT = "a pink sunflower and a yellow flamingo"
PROMPTS = (
    PROMPT,
    "a red car and a blue bench, a fluffy white cat on a wooden table",
    "(a pink:1.2) sunflower and a [yellow] flamingo, ((golden)) hat",
    "a cat that is not black and a dog that is brown 🐶",
    ", ".join(["a green apple", "a shiny silver spoon", "a striped red scarf", "an old leather bag"] * 6),
)
FULL_RUN = 60
"""From this many jobs on, the warm-up is one pass over every good job before any bad one."""


@dataclass(frozen=True)
class Job:
    """One queued graph and what should come of it."""

    name: str
    graph: dict
    bad: bool = False
    culprits: tuple[str, ...] = ()
    """Words one of which the refusal must name (the input, the key or the value)."""
    interrupt: bool = False


def _base(ckpt: str, prompt: str, batch: int, size: int = SIZE) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": prompt}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
    }


def _probe(graph: dict, source: list, kind: str, label: str) -> None:
    graph[f"probe_{label}"] = {"class_type": "SoakProbe", "inputs": {"label": label, kind: source}}


def _decode_and_probe(graph: dict, latent: list) -> None:
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["ckpt", 2]}}
    _probe(graph, latent, "latent", "latent")
    _probe(graph, ["decode", 0], "image", "image")


def plain_graph(ckpt: str, *, prompt: str = PROMPT, sampler: str = "euler", batch: int = 1, seed: int = SEED,
                steps: int = STEPS) -> dict:
    """A stock KSampler job (no pack node)."""
    graph = _base(ckpt, prompt, batch)
    graph["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler,
        "scheduler": "karras", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "denoise": 1.0}}
    _decode_and_probe(graph, ["sampler", 0])
    return graph


def guided_graph(ckpt: str, method: str = "syngen", mode: str = "faithful", *, prompt: str = PROMPT,
                 sampler: str = "euler", batch: int = 1, advanced: str | None = None, step_size: float = 20.0,
                 guided_fraction: float = 0.5, override: str = "", words: str = "", custom: bool = False,
                 chain: str | None = None, steps: int = STEPS, size: int = SIZE) -> dict:
    """Parse Bindings → Binding Loss Config (optionally chained after a ``chain`` method) → the Binding-Guided
    KSampler, or with ``custom`` KSamplerSelect → Binding-Guided Sampler → SamplerCustom."""
    graph = _base(ckpt, prompt, batch, size)
    graph["parse"] = {"class_type": "ParseBindings", "inputs": {
        "clip": ["ckpt", 1], "prompt": prompt, "mode": "robust", "spacy_model": "en_core_web_sm",
        "override": override}}
    config = {"method": method, "step_size": step_size, "guided_fraction": guided_fraction,
              "advanced": FAST_ADVANCED.get(method, "") if advanced is None else advanced, "weight": 1.0,
              "words": words, "guidance_mode": mode}
    if chain is not None:
        graph["first_config"] = {"class_type": "BindingLossConfig", "inputs": {
            **config, "method": chain, "advanced": FAST_ADVANCED.get(chain, "")}}
        config["previous"] = ["first_config", 0]
    graph["config"] = {"class_type": "BindingLossConfig", "inputs": config}
    guidance = {"bindings": ["parse", 0], "config": ["config", 0]}
    if custom:
        graph["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        graph["wrap"] = {"class_type": "BindingGuidedSampler", "inputs": {"sampler": ["select", 0], **guidance}}
        graph["sigmas"] = {"class_type": "BasicScheduler", "inputs": {
            "model": ["ckpt", 0], "scheduler": "karras", "steps": steps, "denoise": 1.0}}
        graph["sampler"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["ckpt", 0], "add_noise": True, "noise_seed": SEED, "cfg": 5.0, "positive": ["pos", 0],
            "negative": ["neg", 0], "sampler": ["wrap", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
        _probe(graph, ["sampler", 1], "latent", "denoised")
    else:
        graph["sampler"] = {"class_type": "BindingGuidedKSampler", "inputs": {
            "model": ["ckpt", 0], "seed": SEED, "steps": steps, "cfg": 5.0, "sampler_name": sampler,
            "scheduler": "karras", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0, **guidance}}
        _probe(graph, ["sampler", 1], "image", "attention_maps")
        _probe(graph, ["sampler", 2], "image", "loss_curve")
    _decode_and_probe(graph, ["sampler", 0])
    return graph


def good_jobs(ckpt: str) -> list[Job]:
    """Every method in both guidance modes, several samplers, batch 1 and 2, both sampler nodes, a chain, edge
    prompts, and plain KSampler jobs."""
    g = guided_graph
    return [
        Job("syngen faithful euler", g(ckpt, "syngen", "faithful")),
        Job("syngen_entropy fast dpmpp_2m b2", g(ckpt, "syngen_entropy", "fast", sampler="dpmpp_2m", batch=2)),
        Job("divide_and_bind faithful euler_a", g(ckpt, "divide_and_bind", "faithful", sampler="euler_ancestral",
                                                  prompt=PROMPTS[1])),
        Job("attend_and_excite fast heun", g(ckpt, "attend_and_excite", "fast", sampler="heun")),
        Job("tsam faithful ddim b2", g(ckpt, "tsam", "faithful", sampler="ddim", batch=2)),
        Job("plain euler", plain_graph(ckpt, seed=SEED + 1)),
        Job("syngen fast lms custom", g(ckpt, "syngen", "fast", sampler="lms", custom=True, prompt=PROMPTS[2])),
        Job("divide_and_bind fast dpmpp_2m b2", g(ckpt, "divide_and_bind", "fast", sampler="dpmpp_2m", batch=2)),
        Job("attend_and_excite faithful euler custom b2", g(ckpt, "attend_and_excite", "faithful", custom=True,
                                                             batch=2, words="sunflower, flamingo")),
        Job("tsam fast euler", g(ckpt, "tsam", "fast", prompt=PROMPTS[3])),
        Job("syngen_entropy faithful dpmpp_sde", g(ckpt, "syngen_entropy", "faithful", sampler="dpmpp_sde")),
        Job("chain syngen+attend_and_excite", g(ckpt, "attend_and_excite", "faithful", chain="syngen")),
        Job("plain dpmpp_2m b2", plain_graph(ckpt, sampler="dpmpp_2m", batch=2, prompt=PROMPTS[1])),
        Job("empty prompt", g(ckpt, "syngen", "faithful", prompt="")),
        Job("long prompt syngen fast", g(ckpt, "syngen", "fast", prompt=PROMPTS[4], sampler="euler_ancestral")),
        Job("override syngen", g(ckpt, "syngen", "faithful", override="flamingo: pink; sunflower: yellow")),
    ]


def bad_jobs(ckpt: str) -> list[Job]:
    """Inputs the pack must refuse (issue #16 lists the first ones)."""
    g = guided_graph
    return [
        Job("advanced scale_factor = inf", g(ckpt, advanced="scale_factor = inf"), True, ("scale_factor",)),
        Job("advanced scale_factor = 1e30 fast", g(ckpt, mode="fast", advanced="scale_factor = 1e30"), True,
            ("scale_factor",)),
        Job("advanced softmax_scale = nan", g(ckpt, "divide_and_bind", advanced="softmax_scale = nan\nrefine = false"),
            True, ("softmax_scale",)),
        Job("advanced unknown key", g(ckpt, advanced="bogus_key = 3"), True, ("bogus_key",)),
        Job("refused sampler uni_pc", g(ckpt, sampler="uni_pc"), True, ("uni_pc",)),
        Job("malformed override", g(ckpt, override="sunflower pink"), True, ("override",)),
        Job("step_size NaN", g(ckpt, step_size=math.nan), True, ("step_size", "scale_factor")),
        Job("guided_fraction NaN", g(ckpt, guided_fraction=math.nan), True, ("guided_fraction",)),
        Job("divide_and_bind without modifiers", g(ckpt, "divide_and_bind", prompt="a cat and a dog"), True,
            ("loss_mode", "modifier")),
        Job("steps 0", g(ckpt, steps=0), True, ("steps",)),
        Job("unknown guidance_mode", g(ckpt, mode="turbo"), True, ("guidance_mode",)),
    ]


def interrupt_job(ckpt: str, index: int) -> Job:
    """A guided job long enough (about 10-30 s on a CPU) to be cancelled while it samples."""
    method, mode = (("syngen", "faithful"), ("attend_and_excite", "fast"), ("tsam", "faithful"))[index % 3]
    return Job(f"cancel {method} {mode}", guided_graph(ckpt, method, mode, steps=40, size=256,
                                                       guided_fraction=1.0), interrupt=True)


def job_plan(ckpt: str, count: int) -> list[Job]:
    """``count`` jobs: the leak reference (a plain KSampler job) first and last; good and bad jobs mixed (every
    third job is bad; in a full run only after the warm-up pass over the good jobs), and three cancels spread out
    (each followed by a good job, which must run). The rest of each list comes round again in order."""
    reference = Job("leak reference", plain_graph(ckpt))
    if count <= 2:
        return [reference] * count
    good, bad = good_jobs(ckpt), bad_jobs(ckpt)
    middle: list[Job] = []
    g = b = 0
    cancels = {max(1, count * k // 4) for k in (1, 2, 3)} if count >= 8 else set()
    first_bad = len(good) + 1 if count >= FULL_RUN else 2
    while len(middle) < count - 2:
        position = len(middle) + 1
        if position in cancels:
            middle.append(interrupt_job(ckpt, len(cancels & set(range(position)))))
        elif position >= first_bad and position % 3 == 2 and not (middle and middle[-1].interrupt):
            middle.append(bad[b % len(bad)])
            b += 1
        else:
            middle.append(good[g % len(good)])
            g += 1
    return [reference, *middle, reference]


def warmup_count(ckpt: str, count: int) -> int:
    """Jobs before the first RSS sample: in a full run the leak reference and one pass over the good jobs."""
    return 1 + len(good_jobs(ckpt)) if count >= FULL_RUN else max(1, count // 3)
