"""Binding Loss Config: method and hyperparameters, chainable into a weighted sum of terms."""

from __future__ import annotations

from typing import Any

from ..binding_losses.objectives import METHODS, ObjectiveChain, default_params, make_objective
from ..guidance.inputs import GuidanceConfig
from ..kernels.cpu_convolution import CPU_CONVOLUTION_CHOICES

CATEGORY = "sampling/binding_guidance"
METHOD_ORDER = ["syngen", "syngen_entropy", "divide_and_bind", "attend_and_excite", "tsam"]
GUIDANCE_MODES = ("faithful", "fast")


def parse_advanced(text: str) -> dict[str, Any]:
    """Read ``key = value`` lines (``#`` starts a comment) into typed values."""
    params: dict[str, Any] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(
                f"advanced, line {number}: '{raw.strip()}' is not 'key = value' (e.g. 'tv_variant = fixed')."
            )
        key, value = (part.strip() for part in line.split("=", 1))
        params[key] = _typed(value)
    return params


def _typed(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value.strip("'\"")


def parse_words(text: str) -> tuple[str, ...]:
    """Split a comma-separated word list ("cat, frog") into words."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def build_config(
    method: str,
    step_size: float,
    guided_fraction: float,
    advanced: str = "",
    weight: float = 1.0,
    previous: GuidanceConfig | None = None,
    words: str = "",
    guidance_mode: str = "faithful",
) -> GuidanceConfig:
    """Make the BINDING_CONFIG for one method, appended to ``previous`` as a weighted term when given.

    ``guidance_mode`` ("faithful" or "fast") is this node's choice; in a chain the config nearest the sampler decides.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown '{method}'. Choose one of {', '.join(METHOD_ORDER)}.")
    if guidance_mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance_mode: unknown '{guidance_mode}'. Choose one of {', '.join(GUIDANCE_MODES)}.")
    params = default_params(method)
    params.update({"scale_factor": step_size, "guided_fraction": guided_fraction})
    params = {k: v for k, v in params.items() if k in default_params(method)}
    try:
        extra = parse_advanced(advanced)
        measure_after_step = bool(extra.pop("measure_after_step", False))
        stop_below = extra.pop("stop_below", None)
        if stop_below is not None and not isinstance(stop_below, (int, float)):
            raise ValueError(f"stop_below must be a number, got {stop_below!r}")
        guidance_attention = extra.pop("guidance_attention", None)
        if guidance_attention not in (None, "sdpa", "comfy"):
            raise ValueError(f"guidance_attention must be 'sdpa' or 'comfy', got {guidance_attention!r}")
        cpu_convolution = extra.pop("cpu_convolution", None)
        if cpu_convolution not in (None, *CPU_CONVOLUTION_CHOICES):
            choices = "', '".join(CPU_CONVOLUTION_CHOICES)
            raise ValueError(f"cpu_convolution must be '{choices}', got {cpu_convolution!r}")
        main_factor = extra.pop("main_factor", None)
        if main_factor is not None and (not isinstance(main_factor, int) or main_factor not in (1, 2, 4, 8)):
            raise ValueError(
                f"main_factor must be 1, 2, 4 or 8 (the attention level, 4 = 1/32 of the image side), got {main_factor!r}"
            )
        params.update(extra)
        objective = make_objective(method, **params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Binding Loss Config ({method}): {error}") from error
    terms = list(previous.objective.terms) if previous is not None else []
    terms.append((float(weight), objective))
    description = " + ".join(f"{w:g}×{term.name}" for w, term in terms)
    subject_words = parse_words(words) or (previous.subject_words if previous is not None else ())
    measure_after_step = measure_after_step or (previous is not None and previous.measure_after_step)
    # 'main_factor' picks the attention level the losses read (4 = 1/32 of the image side); the recorder
    # must record that level, so it is also the guidance config's level.
    if main_factor is None:
        main_factor = previous.main_factor if previous is not None else 4
    if guidance_attention is None:
        guidance_attention = previous.guidance_attention if previous is not None else "sdpa"
    if cpu_convolution is None:
        cpu_convolution = previous.cpu_convolution if previous is not None else "default"
    if stop_below is None and previous is not None:
        stop_below = previous.stop_below
    return GuidanceConfig(
        objective=ObjectiveChain(terms),
        subject_words=subject_words,
        main_factor=int(main_factor),
        guidance_attention=guidance_attention,
        cpu_convolution=cpu_convolution,
        measure_after_step=measure_after_step,
        stop_below=None if stop_below is None else float(stop_below),
        mode=guidance_mode,
        description=description,
    )


class BindingLossConfig:
    """Choose the binding method and its hyperparameters (defaults reproduce the reference code)."""

    DESCRIPTION = (
        "Chooses the binding loss and its schedule. Defaults reproduce each method's reference code. Chain several "
        "configs (connect one into 'previous') to add their losses with weights; the first config's schedule is used."
    )
    CATEGORY = CATEGORY
    FUNCTION = "configure"
    RETURN_TYPES = ("BINDING_CONFIG",)
    RETURN_NAMES = ("config",)
    OUTPUT_TOOLTIPS = ("The guidance configuration for a Binding-Guided KSampler or Sampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        methods = [m for m in METHOD_ORDER if m in METHODS] + sorted(set(METHODS) - set(METHOD_ORDER))
        return {
            "required": {
                "method": (
                    methods,
                    {
                        "default": "syngen",
                        "tooltip": "syngen: SynGen (Rassin et al. 2023). syngen_entropy: SynGen with entropy terms. divide_and_bind: Divide & Bind. attend_and_excite: Attend-and-Excite. tsam: T-SAM.",
                    },
                ),
                "step_size": (
                    "FLOAT",
                    {
                        "default": 20.0,
                        "min": 0.0,
                        "max": 1000.0,
                        "step": 0.5,
                        "tooltip": "Latent step size of the gradient update (reference: 20 for SynGen, A&E and D&B; 5 for T-SAM). A&E, D&B and T-SAM decay it as s·sqrt(linspace(1, 0.5, steps)).",
                    },
                ),
                "guided_fraction": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Fraction of the sampling steps that get guidance, from the first step (reference: the first half; T-SAM's code uses 0.6).",
                    },
                ),
                "advanced": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "Optional method hyperparameters, one 'key = value' per line (see the node's help page). Empty keeps the reference defaults.",
                    },
                ),
                "weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.05,
                        "tooltip": "Weight of this loss when chained after another config.",
                    },
                ),
                "words": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Optional comma-separated subject words for Attend-and-Excite and Divide & Bind (e.g. 'cat, frog'). Empty: the nouns found by Parse Bindings.",
                    },
                ),
            },
            "optional": {
                "previous": (
                    "BINDING_CONFIG",
                    {"tooltip": "An earlier config; this method's loss is added to it with 'weight'."},
                ),
                "guidance_mode": (
                    list(GUIDANCE_MODES),
                    {
                        "default": "faithful",
                        "tooltip": "faithful: a separate gradient pass before each guided step, as in the papers. fast: the gradient comes from the step's own model call and moves the latent one step later; slightly weaker during the guided steps. Measured cost of a guided step: on a CPU faithful 1.6–1.7×, fast 1.2–1.35× a plain step; on an H100 (fp16, 512 px) faithful 2.8–3.1×, fast 3.1–3.2×, so on a GPU fast mode saves nothing: keep faithful. In a chain, the config connected to the sampler decides.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, method: str, advanced: str) -> bool | str:  # noqa: N802  (ComfyUI API name)
        """Reject unknown methods and bad ``advanced`` lines before the graph runs (ranges of the numeric
        widgets are checked by ComfyUI itself)."""
        if not isinstance(advanced, str):  # linked from another node: checked when the node runs
            advanced = ""
        try:
            build_config(method, 20.0, 0.5, advanced)
        except ValueError as error:
            return str(error)
        return True

    def configure(
        self,
        method: str,
        step_size: float,
        guided_fraction: float,
        advanced: str,
        weight: float,
        words: str = "",
        previous: GuidanceConfig | None = None,
        guidance_mode: str = "faithful",
    ) -> tuple[GuidanceConfig]:
        config = build_config(method, step_size, guided_fraction, advanced, weight, previous, words, guidance_mode)
        return (config,)
