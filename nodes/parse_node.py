"""Parse Bindings: prompt → entities, modifiers and their CLIP token positions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..guidance.inputs import PromptBindings
from ..guidance.prompt_match import fingerprint_of
from ..parsers import MODES, OVERRIDE_SYNTAX, SPACY_MODEL_CHOICES, parse_bindings, parse_override, register_model_dir
from ..parsers.errors import check_text
from ..tokens import align_entities, describe_layout, strip_comfy_syntax, token_table_for_clip, tokenize_prompt

CATEGORY = "sampling/binding_guidance"


def _register_comfy_spacy_folder() -> None:
    try:
        import folder_paths

        register_model_dir(os.path.join(folder_paths.models_dir, "spacy"))
    except Exception:
        pass


@dataclass(frozen=True)
class ParseResult:
    """Everything Parse Bindings outputs for one prompt."""

    bindings: PromptBindings
    preview: str
    """Positions table (the STRING output)."""
    summary: str
    """Plain-words summary shown on the node."""
    conditioning: list
    """The prompt's CONDITIONING, exactly as CLIP Text Encode makes it."""


def encode_prompt(clip: Any, prompt: str) -> list:
    """The prompt's conditioning by CLIP Text Encode's own path (same tokenizer, weights, embeddings, chunks).

    Raises ``parsers.PromptError`` for text ComfyUI's tokenizer cannot read."""
    return clip.encode_from_tokens_scheduled(tokenize_prompt(clip, prompt))


def parse_and_encode(clip: Any, prompt: str, mode: str = "robust", spacy_model: str = "en_core_web_sm",
                     override: str = "") -> ParseResult:
    """Parse ``prompt``, align its entities with ``clip``'s tokens and encode it once for the positive input.

    Raises ``parsers.PromptError`` (a ``ValueError``) for invalid input (see docs/parser.md).
    """
    check_text(prompt, "prompt")
    check_text(override, "override")
    clean = strip_comfy_syntax(prompt)
    if override.strip():
        parsed = parse_override(override, clean.text)
    else:
        parsed = parse_bindings(clean.text, mode=mode, spacy_model=spacy_model)
    table = token_table_for_clip(clip, prompt)
    alignment = align_entities(parsed, clean, table)
    conditioning = encode_prompt(clip, prompt)
    bindings = PromptBindings(prompt=prompt, layout=alignment.layout, entities=tuple(parsed.entities),
                              parser=parsed.parser, warnings=tuple(parsed.warnings) + tuple(alignment.warnings),
                              clean=clean, table=table, clip=clip,
                              fingerprint=fingerprint_of(conditioning[0][0], encode_prompt(clip, "")[0][0],
                                                         table.prompt_positions()))
    return ParseResult(bindings, preview_text(bindings, table), plain_summary(bindings), conditioning)


def parse_prompt_bindings(clip: Any, prompt: str, mode: str = "robust", spacy_model: str = "en_core_web_sm",
                          override: str = "") -> tuple[PromptBindings, str]:
    """:func:`parse_and_encode`, returning only the bindings and the positions preview."""
    result = parse_and_encode(clip, prompt, mode, spacy_model, override)
    return result.bindings, result.preview



def preview_text(bindings: PromptBindings, table: Any) -> str:
    """The positions table of the node's STRING output (parser, bindings with their context positions, warnings)."""
    lines = [f"parser: {bindings.parser}"]
    if bindings.is_empty:
        lines.append("No bindings found: guidance will do nothing for this prompt (sampling is unchanged).")
    else:
        lines.append(describe_layout(bindings.layout, table))
        if not any(binding.modifiers for binding in bindings.layout.bindings):
            lines.append("No noun has a modifier: SynGen leaves sampling unchanged; Attend-and-Excite and "
                         "Divide & Bind ('loss_mode = tv') still use the nouns as subjects.")
    lines += [f"warning: {w}" for w in bindings.warnings]
    return "\n".join(lines)


def _parser_words(parser: str) -> str:
    if parser.startswith("spacy:"):
        _, model, mode = [*parser.split(":"), "", ""][:3]
        return f"Parser: spaCy {model} ({mode} rules)."
    if parser.startswith("fallback"):
        return "Parser: the simple built-in parser (no spaCy model): check every pair below."
    return "Parser: none, the bindings come from 'override'." if parser == "override" else f"Parser: {parser}."


def plain_summary(bindings: PromptBindings) -> str:
    """The parse in plain words for the node's text box: each noun and its words, then anything to check."""
    lines = [_parser_words(bindings.parser)]
    if bindings.is_empty:
        lines.append("No bindings: the prompt has no noun to guide, so the sampler runs exactly like KSampler.")
    else:
        lines.append("Each noun and the words bound to it:")
        for entity in bindings.entities:
            negated = {(w.start, w.end) for w in getattr(entity, "negated", ())}
            kept = [w.text for w in entity.modifiers if (w.start, w.end) not in negated]
            lines.append(f"  • {entity.noun.text}: {', '.join(kept) if kept else '(no describing word)'}")
        for entity in bindings.entities:
            for word in getattr(entity, "negated", ()):
                lines.append(f"Negated: '{word.text}' on '{entity.noun.text}' is negated, so guidance leaves it out.")
        if not any(binding.modifiers for binding in bindings.layout.bindings):
            lines.append("No noun has a describing word: SynGen changes nothing; Attend-and-Excite and "
                         "Divide & Bind still use the nouns.")
    lines += [f"Note: {warning}" for warning in bindings.warnings]
    return "\n".join(lines)


class ParseBindings:
    """Encode the positive prompt and find its nouns and the modifiers bound to each, with their token positions."""

    DESCRIPTION = (
        "Type the positive prompt here, once. Parse Bindings encodes it with the connected CLIP exactly as CLIP Text "
        "Encode does (connect 'conditioning' to the sampler's positive input) and parses it into nouns and the words "
        "that belong to them ('a pink sunflower and a yellow flamingo' → sunflower: pink; flamingo: yellow), with "
        "their token positions. After a run the node shows the parse; correct it with 'override' if it is wrong."
    )
    CATEGORY = CATEGORY
    FUNCTION = "parse"
    RETURN_TYPES = ("BINDINGS", "STRING", "CONDITIONING")
    RETURN_NAMES = ("bindings", "preview", "conditioning")
    OUTPUT_TOOLTIPS = (
        "Entities, modifiers and token positions for a Binding-Guided sampler.",
        "A table of each noun, its modifiers and their token positions in the CLIP context.",
        "The prompt encoded exactly as CLIP Text Encode encodes it: connect it to the sampler's positive input.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The CLIP that encodes the prompt (after any LoRA loader), as for CLIP Text Encode."}),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a pink sunflower and a yellow flamingo",
                                      "tooltip": "The positive prompt, typed once: it is parsed and encoded here. Weights like (red:1.2) and embedding:name work as in CLIP Text Encode."}),
                "mode": (list(MODES), {"default": "robust", "tooltip": "robust: the improved parser (recommended). faithful: SynGen's reference rules, quirks included."}),
                "spacy_model": (list(SPACY_MODEL_CHOICES), {"default": SPACY_MODEL_CHOICES[0],
                                                            "tooltip": "spaCy English model. Falls back to the built-in rule parser when none is installed (the node says so)."}),
                "override": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "Optional manual bindings that replace the parse. " + OVERRIDE_SYNTAX}),
            }
        }

    def parse(self, clip: Any, prompt: str, mode: str, spacy_model: str, override: str) -> dict:
        if clip is None:
            raise ValueError("clip: connect the CLIP output of your checkpoint loader.")
        _register_comfy_spacy_folder()
        result = parse_and_encode(clip, prompt, mode, spacy_model, override)
        return {"ui": {"binding_parse": [result.summary]},
                "result": (result.bindings, result.preview, result.conditioning)}
