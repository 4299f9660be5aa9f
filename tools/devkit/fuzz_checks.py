"""What "consistent" means for a fuzzed input, checked the same way by the tests and ``benchmarks/fuzz.py``.

A prompt goes through Parse Bindings' pipeline (``strip_comfy_syntax`` → ``parse_bindings`` / ``parse_override`` →
``token_table_for_clip`` → ``align_entities``). It either raises the one documented input error
(``parsers.PromptError``: invalid Unicode text, a malformed override) or parses *consistently*:

1. the clean text maps back to the prompt: every kept character comes from the prompt character its map names;
2. every parser word is a span of the clean text (``text[start:end] == word``); negated ⊆ modifiers;
3. entities come in prompt order, no two entities share (or overlap) a noun, and no modifier overlaps its own noun
   or another modifier of the same noun;
4. the token table has one row per context column, in chunks of 77, and text tokens point into the prompt;
5. every binding position lies inside the context and on a prompt token (never SOT, EOT or padding); negated
   modifiers are not bound;
6. every token bound to a word was made from that word's characters of the prompt (a token made from characters
   of two words, e.g. one byte-level BPE piece across "👍🏽", belongs to both);
7. parsing and aligning the same text again gives the same result (deterministic);
8. no alignment warning about a bad span.

Any other exception is a crash. :class:`InconsistentError` (an ``AssertionError``) reports a broken invariant, so a test
that calls these checks fails with the reason.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

from binding_guidance.parsers import PromptError, parse_bindings, parse_override
from binding_guidance.tokens import align_entities, strip_comfy_syntax, token_table_for_clip

from devkit.workflow_tools import FAST_ADVANCED

SPACY = "en_core_web_sm"
PARSED, INPUT_ERROR = "parsed", "input_error"
NONFINITE_CONDITIONING = "nonfinite_conditioning"
"""The prompt's own weights make CLIP's conditioning non-finite ("(cat:inf)"); KSampler gives NaN there too."""


class InconsistentError(AssertionError):
    """A generated input broke an invariant (the message says which)."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise InconsistentError(message)


def is_invalid_text(prompt: str) -> bool:
    """Whether ``prompt`` is not valid Unicode text (holds an unpaired surrogate): the documented input error."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)


def expect_prompt_error(call: Callable[[], object], pattern: str, error_type: type = PromptError) -> None:
    """``call()`` must raise ``error_type`` whose message matches ``pattern``."""
    try:
        call()
    except error_type as error:
        require(re.search(pattern, str(error)), f"{error_type.__name__} {str(error)!r} does not match {pattern!r}")
        return
    raise InconsistentError(f"expected {error_type.__name__} matching {pattern!r}; the call returned")


def tokenizer_clips() -> dict[str, Any]:
    """Real ComfyUI CLIPs holding only their tokenizers (how CLIP.clone() builds one; no weights): sd1, sdxl."""
    from devkit.comfy_env import bootstrap_comfy

    bootstrap_comfy()
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip

    clips = {}
    for name, tokenizer in (("sd1", comfy.sd1_clip.SD1Tokenizer()), ("sdxl", comfy.sdxl_clip.SDXLTokenizer())):
        clip = comfy.sd.CLIP(no_init=True)
        clip.tokenizer = tokenizer
        clip.tokenizer_options = {}
        clips[name] = clip
    return clips


# --- parsers -----------------------------------------------------------------------------------------------------


def parser_for(mode: str, override: str = "") -> Callable[[str], Any]:
    """The parse step of one mode (``robust``, ``faithful``, ``fallback``, ``override``), checking what ran."""
    expected = {"robust": f"spacy:{SPACY}:robust", "faithful": f"spacy:{SPACY}:faithful", "fallback": "fallback",
                "override": "override"}[mode]

    def parse(text: str) -> Any:
        if mode == "override":
            parsed = parse_override(override, text)
        elif mode == "fallback":
            parsed = parse_bindings(text, "robust", "fallback")
        else:
            parsed = parse_bindings(text, mode, SPACY, include_entities=mode == "faithful")
        require(parsed.parser == expected, f"parser {parsed.parser!r}, expected {expected!r}")
        return parsed

    return parse


# --- the pipeline ------------------------------------------------------------------------------------------------


TOKENIZER_REFUSALS = ("nested too deeply", "cannot read an 'embedding:'")
"""The documented PromptErrors for text ComfyUI's own tokenizer fails on (``tokens.tokenize_prompt``)."""


def is_tokenizer_refusal(message: str) -> bool:
    """Whether ``message`` is a documented refusal of text ComfyUI's tokenizer cannot read, naming ``prompt``."""
    return message.startswith("prompt: ") and any(reason in message for reason in TOKENIZER_REFUSALS)


def check_prompt(prompt: str, clip: Any, parse: Callable[[str], Any]) -> str:
    """Run Parse Bindings' pipeline on ``prompt``: ``PARSED`` (consistent), ``INPUT_ERROR``, or raise."""
    if is_invalid_text(prompt):
        for call in (lambda: strip_comfy_syntax(prompt), lambda: parse(prompt),
                     lambda: token_table_for_clip(clip, prompt)):
            expect_prompt_error(call, r"prompt: .*surrogate")
        return INPUT_ERROR
    clean = strip_comfy_syntax(prompt)
    _check_clean(prompt, clean)
    parsed = parse(clean.text)
    _check_parse(clean.text, parsed)
    try:
        table = token_table_for_clip(clip, prompt)
    except PromptError as error:  # documented: text ComfyUI's own tokenizer cannot read
        require(is_tokenizer_refusal(str(error)), f"undocumented PromptError for valid text: {error}")
        return INPUT_ERROR
    _check_table(prompt, table)
    result = align_entities(parsed, clean, table)
    _check_alignment(parsed, clean, table, result)
    require(parse(clean.text) == parsed, "a second parse of the same text differs")
    again = align_entities(parsed, clean, table)
    require(again.layout == result.layout and again.entities == result.entities, "a second alignment differs")
    return PARSED


def _check_clean(prompt: str, clean: Any) -> None:
    require(clean.original == prompt, "CleanPrompt.original is not the prompt")
    require(len(clean.char_map) == len(clean.text) == len(clean.weights), "clean text, char map and weights differ")
    for ch, origin in zip(clean.text, clean.char_map, strict=True):
        if origin is None:
            continue
        require(0 <= origin < len(prompt), f"char map {origin} outside the prompt")
        # ComfyUI's unescape also turns a literal "\0\1" / "\0\2" into ")" / "(" (kept here, as CLIP reads it)
        source = prompt[origin]
        require(ch == source or (ch.isspace() and source.isspace()) or (ch, source) in ((")", "\1"), ("(", "\2")),
                f"clean {ch!r} maps to prompt {source!r}")


def _overlap(a: Any, b: Any) -> bool:
    return a.start < b.end and b.start < a.end


def _check_parse(text: str, parsed: Any) -> None:
    require(parsed.prompt == text, "ParsedPrompt.prompt is not the clean text")
    nouns = [ent.noun for ent in parsed.entities]
    require([n.start for n in nouns] == sorted(n.start for n in nouns), "entities are not in prompt order")
    for i, ent in enumerate(parsed.entities):
        require(set(ent.negated) <= set(ent.modifiers), f"negated {ent.negated} not among the modifiers")
        for w in (ent.noun, *ent.modifiers):
            require(0 <= w.start <= w.end <= len(text) and text[w.start:w.end] == w.text, f"word {w} is not a span")
        require(not any(_overlap(ent.noun, other) for other in nouns[i + 1:]), f"noun {ent.noun} bound twice")
        mods = ent.modifiers
        require(not any(_overlap(ent.noun, m) for m in mods), f"a modifier of {ent.noun} overlaps it")
        require(not any(_overlap(a, b) for j, a in enumerate(mods) for b in mods[j + 1:]),
                f"modifiers of {ent.noun} overlap each other")


def _check_table(prompt: str, table: Any) -> None:
    n = table.context_length
    require(n == len(table) == sum(table.chunk_lengths) and n % 77 == 0, f"context length {n}")
    for i, tok in enumerate(table):
        require(tok.position == i, f"token {i} has position {tok.position}")
        if tok.span is not None:
            require(tok.kind == "text" and 0 <= tok.start < tok.end <= len(prompt), f"token span {tok}")


def _check_alignment(parsed: Any, clean: Any, table: Any, result: Any) -> None:
    layout, n = result.layout, table.context_length
    require(layout.context_length == n, "layout context length differs from the table's")
    pp = layout.prompt_positions
    require(list(pp) == sorted(set(pp)) and all(0 <= p < n and table[p].kind in ("text", "embedding") for p in pp),
            "prompt positions include specials or padding")
    require(len(layout.bindings) == len(result.entities), "bindings and aligned entities differ in number")
    for binding, entity in zip(layout.bindings, result.entities, strict=True):
        require(binding.noun, "a binding without a noun")
        for positions in (binding.noun, *binding.modifiers):
            require(positions and all(0 <= p < n and table[p].kind == "text" for p in positions),
                    f"positions {positions} are not text tokens")
            require(set(positions) <= set(pp), f"positions {positions} are not prompt positions")
        for word in (entity.noun, *entity.modifiers):
            chars = set(clean.original_indices(word.start, word.end))
            require(all(chars & set(range(table[p].start, table[p].end)) for p in word.positions),
                    f"a token of {word.text!r} was not made from its characters")
    negated = {(w.start, w.end) for ent in parsed.entities for w in ent.negated}
    require(not any((m.start, m.end) in negated for ent in result.entities for m in ent.modifiers),
            "a negated modifier is bound")
    require(not [w for w in result.warnings if "bad span" in w or "does not match" in w], result.warnings)


def check_override(prompt: str, override: str, valid: bool, clip: Any) -> str:
    """An override parses consistently (and, when ``valid``, gives exactly its entries) or raises PromptError
    naming ``override`` and showing the syntax."""
    try:
        outcome = check_prompt(prompt, clip, parser_for("override", override))
    except PromptError as error:
        require(not valid, f"valid override {override!r} rejected: {error}")
        require(str(error).startswith("override ") and "sunflower: pink; flamingo: yellow" in str(error),
                f"override error does not name the input or show the syntax: {error}")
        return INPUT_ERROR
    if valid and outcome == PARSED:
        parsed = parse_override(override, strip_comfy_syntax(prompt).text)
        entries = [e.partition(":")[0].strip().lower() for e in re.split(r"[;\n]", override) if e.strip()]
        require(sorted(ent.noun.text.lower() for ent in parsed.entities) == sorted(entries),
                f"override {override!r} gave nouns {[e.noun.text for e in parsed.entities]}")
    return outcome


# --- Binding Loss Config -----------------------------------------------------------------------------------------

VALID_CONFIG, REFUSED = "valid", "refused"
WIDGET_KEYS = {"step_size": "scale_factor"}
"""Widgets whose hyperparameter has another name (errors may name either)."""


def _call_with(function: Callable[..., Any], inputs: dict) -> Any:
    """Call ``function`` with the inputs it declares, as ComfyUI calls ``VALIDATE_INPUTS``."""
    names = function.__code__.co_varnames[: function.__code__.co_argcount]
    return function(**{name: inputs[name] for name in names if name in inputs})


def names_an_input(message: str, inputs: dict) -> bool:
    """Whether an error message names the input it is about: a widget, or a key written in ``advanced``."""
    keys = {line.split("#", 1)[0].split("=", 1)[0].strip() for line in str(inputs.get("advanced", "")).splitlines()}
    names = {*inputs, *(k for k in keys if k), *(WIDGET_KEYS[name] for name in inputs if name in WIDGET_KEYS)}
    return any(name in message for name in names)


def nonfinite_values(value: Any, name: str = "config", depth: int = 0) -> list[str]:
    """Where a built config (its settings, its objective terms and their hyperparameters) holds a non-finite number."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [name]
    if depth > 5 or isinstance(value, str | bytes | type) or callable(value):
        return []
    if isinstance(value, tuple | list):
        return [found for item in value for found in nonfinite_values(item, name, depth + 1)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in nonfinite_values(item, str(key), depth + 1)]
    if hasattr(value, "__dict__"):
        return [found for key, item in vars(value).items() for found in nonfinite_values(item, key, depth + 1)]
    return []


def check_config(node_class: type, inputs: dict, *, linked: bool = False) -> tuple[str, list[str]]:
    """Build one Binding Loss Config as ComfyUI would: ``VALIDATE_INPUTS``, then, if that passed, ``configure``.

    With ``linked``, ``advanced`` comes from another node's output: ComfyUI cannot validate it, so ``configure``
    alone runs. Returns ``(VALID_CONFIG, non-finite hyperparameters)`` or ``(REFUSED, [])``. A refusal is a
    validation message or a ValueError from ``configure``, and it must name the input; anything else raises.
    """
    if not linked:
        verdict = _call_with(node_class.VALIDATE_INPUTS, inputs)
        require(verdict is True or isinstance(verdict, str), f"VALIDATE_INPUTS returned {verdict!r}")
        if verdict is not True:
            require(names_an_input(verdict, inputs), f"validation message names no input: {verdict}")
            return REFUSED, []
    try:
        config = node_class().configure(**inputs)[0]
    except ValueError as error:
        require(names_an_input(str(error), inputs), f"error names no input: {error}")
        return REFUSED, []
    require(hasattr(config, "objective"), f"configure returned {config!r}")
    return VALID_CONFIG, nonfinite_values(config)


# --- the guided sampler ------------------------------------------------------------------------------------------

GUIDED_STEPS, GUIDED_LATENT_SIDE, GUIDED_SEED = 2, 16, 16
"""Each guided fuzz run: 2 steps, both guided, on a 16×16 latent (128 px) of the tiny model."""


class GuidedRig:
    """ComfyUI's node classes with the pack loaded by ComfyUI, the tiny model, and the pack's two input errors as
    ComfyUI loaded them (its module tree is not ``binding_guidance``)."""

    def __init__(self, nodes: dict[str, type], model: Any, clip: Any, prompt_error: type, guidance_error: type):
        self.nodes, self.model, self.clip = nodes, model, clip
        self.prompt_error, self.guidance_error = prompt_error, guidance_error

    @classmethod
    def load(cls, nodes_module: Any, pack: Any, model: Any, clip: Any) -> GuidedRig:
        errors = [importlib.import_module(f"{pack.__name__}.{name}") for name in ("parsers", "guidance.errors")]
        return cls(nodes_module.NODE_CLASS_MAPPINGS, model, clip, errors[0].PromptError,
                   errors[1].BindingGuidanceError)

    def __repr__(self) -> str:
        return "GuidedRig(tiny model)"


def check_guided(rig: GuidedRig, prompt: str, variant: tuple[str, str, str], *, mode: str = "robust",
                 override: str = "") -> str:
    """Parse Bindings → Binding Loss Config → Binding-Guided KSampler on ``prompt`` through the node classes, with
    the real tiny model, under inference mode as ComfyUI runs them.

    Returns ``INPUT_ERROR`` (Parse Bindings' PromptError, or the sampler's BindingGuidanceError naming its input,
    e.g. Divide & Bind on a prompt with no modifier), ``NONFINITE_CONDITIONING`` (sampled, nothing to check), or
    ``PARSED``: every output is finite, and a prompt without bindings samples exactly like KSampler.
    """
    import torch

    method, guidance_mode, sampler = variant
    nodes = rig.nodes
    spacy = "fallback (no spaCy)" if mode == "fallback" else SPACY
    parse_mode = mode if mode in ("robust", "faithful") else "robust"
    with torch.inference_mode():
        try:
            parsed = nodes["ParseBindings"]().parse(rig.clip, prompt, parse_mode, spacy, override)
        except rig.prompt_error as error:
            require(is_invalid_text(prompt) or str(error).startswith("override ") or is_tokenizer_refusal(str(error)),
                    f"PromptError for {prompt!r}")
            return INPUT_ERROR
        bindings, preview, *encoded = parsed["result"] if isinstance(parsed, dict) else parsed
        require(not is_invalid_text(prompt) and isinstance(preview, str), f"parsed invalid text {prompt!r}")
        # the node's own conditioning output where it has one (how its workflows connect it), else CLIP Text Encode
        positive = encoded[0] if encoded else nodes["CLIPTextEncode"]().encode(rig.clip, prompt)[0]
        negative = nodes["CLIPTextEncode"]().encode(rig.clip, "")[0]
        config = nodes["BindingLossConfig"]().configure(
            method=method, step_size=20.0, guided_fraction=1.0, advanced=FAST_ADVANCED.get(method, ""), weight=1.0,
            guidance_mode=guidance_mode)[0]
        common = dict(model=rig.model, seed=GUIDED_SEED, steps=GUIDED_STEPS, cfg=5.0, sampler_name=sampler,
                      scheduler="karras", positive=positive, negative=negative, denoise=1.0,
                      latent_image={"samples": torch.zeros(1, 4, GUIDED_LATENT_SIDE, GUIDED_LATENT_SIDE)})
        try:
            latent, maps, curve = nodes["BindingGuidedKSampler"]().sample(**common, bindings=bindings,
                                                                          config=config)["result"]
        except rig.guidance_error as error:
            require(re.match(r"(config|bindings|positive|sampler_name|model): ", str(error)), f"unclear: {error}")
            return INPUT_ERROR
        if not torch.isfinite(positive[0][0]).all():
            return NONFINITE_CONDITIONING
        for name, tensor in (("latent", latent["samples"]), ("attention_maps", maps), ("loss_curve", curve)):
            require(torch.isfinite(tensor).all(), f"{name} is not finite ({variant}, prompt {prompt!r})")
        if bindings.is_empty:
            plain = nodes["KSampler"]().sample(**common)[0]["samples"]
            require(torch.equal(latent["samples"], plain), f"no bindings, yet not KSampler's result: {prompt!r}")
    return PARSED
