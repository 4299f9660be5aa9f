"""Prompt parsers: prompt text -> entities and the modifiers bound to them (no torch, no ComfyUI).

spaCy is optional and imported lazily; without it a built-in rule parser runs.
"""

from __future__ import annotations

from .api import MODES, parse_bindings
from .errors import PromptError
from .override import OVERRIDE_SYNTAX, parse_override
from .spacy_loader import SPACY_MODEL_CHOICES, available_spacy_models, register_model_dir
from .types import Entity, ParsedPrompt, Word

__all__ = [
    "MODES",
    "OVERRIDE_SYNTAX",
    "SPACY_MODEL_CHOICES",
    "Entity",
    "ParsedPrompt",
    "PromptError",
    "Word",
    "available_spacy_models",
    "parse_bindings",
    "parse_override",
    "register_model_dir",
]
