"""Parse Bindings: prompt → entities, modifiers and their CLIP token positions."""

from __future__ import annotations

import os
from typing import Any

from ..attention_patch.text_attention import clip_text_self_attention
from ..guidance.inputs import PromptBindings
from ..parsers import MODES, OVERRIDE_SYNTAX, SPACY_MODEL_CHOICES, parse_bindings, parse_override, register_model_dir
from ..parsers.errors import check_text
from ..tokens import align_entities, describe_layout, strip_comfy_syntax, token_table_for_clip

CATEGORY = "sampling/binding_guidance"


def _register_comfy_spacy_folder() -> None:
    try:
        import folder_paths

        register_model_dir(os.path.join(folder_paths.models_dir, "spacy"))
    except Exception:
        pass


def parse_prompt_bindings(clip: Any, prompt: str, mode: str = "robust", spacy_model: str = "en_core_web_sm",
                          override: str = "") -> tuple[PromptBindings, str]:
    """Parse ``prompt`` and align its entities with ``clip``'s tokens. Returns the bindings and a preview text.

    Raises ``parsers.PromptError`` (a ``ValueError``) for invalid input (see docs/parser.md), nothing else.
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
    warnings = tuple(parsed.warnings) + tuple(alignment.warnings)
    bindings = PromptBindings(prompt=prompt, layout=alignment.layout, entities=tuple(parsed.entities),
                              parser=parsed.parser, warnings=warnings, clean=clean, table=table,
                              text_self_attention=_clip_self_attention(clip, prompt, table))
    return bindings, preview_text(bindings, table)


def _clip_self_attention(clip: Any, prompt: str, table: Any) -> Any:
    """T-SAM's CLIP text self-attention, when the layout's positions are CLIP positions (not Flux's T5 context)."""
    return clip_text_self_attention(clip, prompt) if "t5xxl" not in table.encoders else None


def preview_text(bindings: PromptBindings, table: Any) -> str:
    """The human-readable summary shown by the node's STRING output."""
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


class ParseBindings:
    """Find the entities of a prompt and the modifiers bound to each, with their CLIP token positions."""

    DESCRIPTION = (
        "Parses the prompt into nouns and the modifiers that belong to them ('a pink sunflower and a yellow "
        "flamingo' → sunflower: pink; flamingo: yellow), and finds their token positions with the connected CLIP's "
        "own tokenizer. Feed the same prompt to the positive CLIP Text Encode. Check the preview; correct it with "
        "'override' if the parse is wrong."
    )
    CATEGORY = CATEGORY
    FUNCTION = "parse"
    RETURN_TYPES = ("BINDINGS", "STRING")
    RETURN_NAMES = ("bindings", "preview")
    OUTPUT_TOOLTIPS = ("Entities, modifiers and token positions for a Binding-Guided sampler.",
                       "A readable table of each noun, its modifiers and their token positions.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The same CLIP that encodes the positive prompt (its tokenizer gives the positions)."}),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a pink sunflower and a yellow flamingo",
                                      "tooltip": "The positive prompt, exactly as given to CLIP Text Encode. Weights like (red:1.2) and embedding:name are understood."}),
                "mode": (list(MODES), {"default": "robust", "tooltip": "robust: the improved parser (recommended). faithful: SynGen's reference rules, quirks included."}),
                "spacy_model": (list(SPACY_MODEL_CHOICES), {"default": SPACY_MODEL_CHOICES[0],
                                                            "tooltip": "spaCy English model. Falls back to the built-in rule parser when none is installed (the preview says so)."}),
                "override": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "Optional manual bindings that replace the parse. " + OVERRIDE_SYNTAX}),
            }
        }

    def parse(self, clip: Any, prompt: str, mode: str, spacy_model: str, override: str) -> tuple[PromptBindings, str]:
        if clip is None:
            raise ValueError("clip: connect the CLIP output of your checkpoint loader.")
        _register_comfy_spacy_folder()
        return parse_prompt_bindings(clip, prompt, mode, spacy_model, override)
