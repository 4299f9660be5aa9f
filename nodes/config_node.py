"""Binding Loss Config (method and hyperparameters, chainable into a weighted sum) and Binding Guidance Options
(the sampler-level settings). Every widget's type and range comes from a declared setting.

The sampler settings are a node of their own, not five more widgets on every config: they hold for the whole run,
not for one loss term, so a chain needs them once; most workflows never touch them; and an optional link input
adds no value to the config's ``widgets_values``, so workflows saved before it load unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..binding_losses.objectives import METHODS, ChainTerm, ObjectiveChain, make_objective, method_settings
from ..guidance.inputs import JOINT_ATTENTION_SETTINGS, SAMPLER_SETTINGS, GuidanceConfig, GuidanceOptions
from ..settings import (
    Setting,
    SettingError,
    declared_settings,
    parse_advanced,
    settings_table,
    unknown_keys_error,
    widget_spec,
)

CATEGORY = "sampling/binding_guidance"
METHOD_ORDER = ["syngen", "syngen_entropy", "divide_and_bind", "attend_and_excite", "tsam"]


def _owners(key: str) -> list:
    """Every declaration of ``key``: the methods' hyperparameters, then the sampler settings (older workflows)."""
    found = [settings[key] for method in METHOD_ORDER if key in (settings := method_settings(method))]
    options = declared_settings(GuidanceOptions)
    return found + ([options[key]] if key in options else [])


def check_advanced(text: str) -> None:
    """Refuse what is wrong in ``advanced`` whatever the method: a malformed line, a key no method declares, or a
    value outside its declared type and range (naming key, value, range and default). Whether a key belongs to the
    chosen method is checked when the node runs (ComfyUI's validation cannot pass the method without flagging it)."""
    for key, value in parse_advanced(text).items():
        owners = _owners(key)
        if not owners:
            known = sorted({k for m in METHODS for k in method_settings(m)} | set(SAMPLER_SETTINGS))
            raise SettingError(f"unknown parameter '{key}'; valid parameters: {known}")
        refusals = []
        for owner in owners:
            try:
                owner.convert(value)
                break
            except SettingError as error:
                refusals.append(error)
        else:
            raise refusals[0]


WIDGET_SETTINGS = {"step_size": "scale_factor", "guided_fraction": "guided_fraction"}
"""The config's number widgets and the method hyperparameter each one sets."""


def widget_settings() -> dict[str, Setting]:
    """The declarations behind the config's number widgets, under the widgets' names (a widget cannot hold none,
    so they are SynGen's, whose bounds every method shares)."""
    syngen = method_settings("syngen")
    return {widget: replace(syngen[key], name=widget) for widget, key in WIDGET_SETTINGS.items()}


def check_widgets(step_size: float, guided_fraction: float) -> None:
    """Refuse a widget value outside its range under the widget's own name. ComfyUI's min/max check lets NaN
    through, and the hyperparameter's own refusal would name ``scale_factor``, which the user never sees."""
    declared = widget_settings()
    declared["step_size"].convert(step_size)
    declared["guided_fraction"].convert(guided_fraction)


def advanced_values(method: str, text: str) -> dict[str, str]:
    """``advanced``'s ``{key: value text}``, refusing a malformed line or a key neither ``method`` nor the sampler
    declares, naming ``advanced``. When ``advanced`` is linked from another node ComfyUI skips VALIDATE_INPUTS, so
    this is the only check it gets."""
    try:
        values = parse_advanced(text)
        valid = [*method_settings(method), *SAMPLER_SETTINGS]
        unknown = set(values) - set(valid)
        if unknown:
            raise unknown_keys_error(unknown, valid, f"method {method!r}")
    except SettingError as error:
        raise SettingError(f"advanced: {error}") from error
    return values


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
    options: GuidanceOptions | None = None,
) -> GuidanceConfig:
    """Make the BINDING_CONFIG for one method, appended to ``previous`` as a weighted term when given.

    Sampler settings come from ``options`` when connected, else from ``previous`` (or their defaults); sampler keys
    that older workflows put in ``advanced`` still apply on top. ``guidance_mode`` is this node's choice: in a chain
    the config nearest the sampler decides.
    """
    try:
        check_widgets(step_size, guided_fraction)
        values = advanced_values(method, advanced)
        legacy = {key: values.pop(key) for key in SAMPLER_SETTINGS if key in values}
        params = {"scale_factor": step_size, "guided_fraction": guided_fraction, **values}
        term = ChainTerm(make_objective(method, **params), weight)
        settings = _sampler_settings(previous, options, legacy)
        terms = [*(previous.objective.terms if previous is not None else ()), (term.weight, term.objective)]
        merged = {
            "objective": ObjectiveChain(terms),
            "mode": guidance_mode,
            "subject_words": parse_words(words) or (previous.subject_words if previous is not None else ()),
            "description": " + ".join(f"{w:g}×{objective.name}" for w, objective in terms),
            **{name: getattr(settings, name) for name in SAMPLER_SETTINGS},
        }
        return replace(previous, **merged) if previous is not None else GuidanceConfig(**merged)
    except ValueError as error:
        raise ValueError(f"Binding Loss Config ({method}): {error}") from error


def _sampler_settings(
    previous: GuidanceConfig | None, options: GuidanceOptions | None, legacy: dict[str, str]
) -> GuidanceOptions:
    if options is not None and legacy:
        raise SettingError(
            f"advanced sets {sorted(legacy)}, which the connected Binding Guidance Options node also sets: "
            "set them on that node and delete these lines."
        )
    settings = options or (previous.options() if previous is not None else GuidanceOptions())
    return replace(settings, **legacy)


def help_tables() -> dict[str, str]:
    """The help pages' tables, generated from the declarations (``scripts/make_help_pages.py`` writes them)."""
    widgets = {**widget_settings(), "weight": declared_settings(ChainTerm)["weight"]}
    tables = {"widgets": settings_table(widgets), "options": settings_table(declared_settings(GuidanceOptions))}
    for method in METHOD_ORDER:
        tables[method] = settings_table(method_settings(method), skip=("scale_factor", "guided_fraction"))
    return tables


def _method_widget(name: str, tooltip: str, step: float) -> tuple:
    return widget_spec(method_settings("syngen")[name], tooltip, step=step)


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
                        "tooltip": "syngen: SynGen (Rassin et al. 2023), for attribute binding. syngen_entropy: SynGen with entropy terms that keep noun maps focused. divide_and_bind: Divide & Bind, makes every noun appear and binds modifiers. attend_and_excite: Attend-and-Excite, for missing subjects. tsam: T-SAM, aligns image attention with the text encoder's.",
                    },
                ),
                "step_size": _method_widget(
                    "scale_factor",
                    "Latent step size of the gradient update (reference: 20 for SynGen, A&E and D&B; 5 for T-SAM). A&E, D&B and T-SAM decay it as s·sqrt(linspace(1, 0.5, steps)). Raise it when guidance has no visible effect; lower it when images show artefacts.",
                    0.5,
                ),
                "guided_fraction": _method_widget(
                    "guided_fraction",
                    "Fraction of the sampling steps that get guidance, from the first step (reference: the first half; T-SAM's code uses 0.6). The layout is decided early, so guiding late steps rarely helps.",
                    0.05,
                ),
                "advanced": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "Optional method hyperparameters, one 'key = value' per line (see the node's help page for every key, its range and default). Empty keeps the reference defaults.",
                    },
                ),
                "weight": widget_spec(
                    declared_settings(ChainTerm)["weight"],
                    "Weight of this loss when chained after another config through 'previous'.",
                    step=0.05,
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
                "guidance_mode": widget_spec(declared_settings(GuidanceConfig)["mode"]),
                "options": (
                    "BINDING_OPTIONS",
                    {"tooltip": "Optional sampler settings from a Binding Guidance Options node (attention level, early exit, kernels). Unconnected: those of 'previous', else the defaults."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, advanced: str) -> bool | str:  # noqa: N802  (ComfyUI API name)
        """Refuse a bad ``advanced`` before the graph runs; ComfyUI flags only ``advanced``. (The widgets' ranges,
        and the method list, are checked by ComfyUI from the input specs.)"""
        if not isinstance(advanced, str):  # linked from another node: checked when the node runs
            return True
        try:
            check_advanced(advanced)
        except SettingError as error:
            return f"advanced: {error}"
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
        options: GuidanceOptions | None = None,
    ) -> tuple[GuidanceConfig]:
        config = build_config(
            method, step_size, guided_fraction, advanced, weight, previous, words, guidance_mode, options
        )
        return (config,)


class BindingGuidanceOptions:
    """The sampler-level settings of binding guidance, for a Binding Loss Config's 'options' input."""

    DESCRIPTION = (
        "Sampler settings for binding guidance: the attention level the losses read, an early exit, and the kernels "
        "of the guidance pass. Connect it to the Binding Loss Config nearest the sampler. Most workflows need none."
    )
    CATEGORY = CATEGORY
    FUNCTION = "configure"
    RETURN_TYPES = ("BINDING_OPTIONS",)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Sampler settings for a Binding Loss Config's 'options' input.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        specs = {name: widget_spec(item) for name, item in declared_settings(GuidanceOptions).items()}
        specs["stop_below"][1]["step"] = 0.01
        optional = {name: specs.pop(name) for name in JOINT_ATTENTION_SETTINGS}
        return {"required": specs, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, stop_below: float) -> bool | str:  # noqa: N802  (ComfyUI API name)
        """Refuse a NaN stop_below before the graph runs (ComfyUI's own min/max check lets NaN through); the other
        inputs are combos and a boolean, which ComfyUI checks itself."""
        try:
            declared_settings(GuidanceOptions)["stop_below"].convert(stop_below)
        except SettingError as error:
            return str(error)
        return True

    def configure(self, **values: Any) -> tuple[GuidanceOptions]:
        return (GuidanceOptions(**values),)
