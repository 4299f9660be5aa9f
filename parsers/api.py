"""``parse_bindings``: pick the model, run the chosen mode, never crash on odd prompts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import PromptError, check_text
from .fallback import parse_fallback
from .reference_rules import parse_reference
from .robust import parse_robust
from .spacy_loader import DEFAULT_MODEL, FALLBACK_NAMES, INSTALL_HINT, resolve_model
from .types import ParsedPrompt, sort_entities

MODES = ("robust", "faithful")


def parse_bindings(prompt: str, mode: str = "robust", spacy_model: str = DEFAULT_MODEL, *,
                   include_entities: bool = False,
                   search_dirs: Iterable[str | Path] | None = None) -> ParsedPrompt:
    """Parse ``prompt`` into entities and their modifiers.

    ``mode``: ``"robust"`` (default, the improved parser) or ``"faithful"`` (SynGen's reference rules).
    ``spacy_model``: a model name (see ``SPACY_MODEL_CHOICES``) or ``"fallback"`` for the built-in rule parser.
    If that model is not installed, en_core_web_sm is used, else the fallback; ``warnings`` says so.
    ``include_entities`` (faithful mode only): the reference's E4, nouns without modifiers become entities.
    ``search_dirs``: extra folders holding model folders (besides those from ``register_model_dir``).
    Raises :class:`PromptError` (a ``ValueError``) for a prompt that is not valid text, an unknown mode or a
    ``spacy_model`` that is not a string; every other string parses.
    """
    check_text(prompt, "prompt")
    if mode not in MODES:
        raise PromptError(f"mode: invalid value {mode!r}; valid modes: {', '.join(repr(m) for m in MODES)}")
    check_text(spacy_model, "spacy_model")
    warnings: list[str] = []
    if spacy_model in FALLBACK_NAMES:
        loaded = None
        warnings.append("the built-in fallback parser (no spaCy) is in use, as requested; it handles only simple "
                        f"prompts (adjectives before nouns, 'and'/'with' lists). For better bindings, {INSTALL_HINT}.")
    else:
        loaded, warnings = resolve_model(spacy_model, search_dirs)
    if loaded is None:
        entities, more = parse_fallback(prompt)
        parser = "fallback"
    else:
        doc = loaded.nlp(prompt)
        if mode == "faithful":
            entities, more = parse_reference(doc, include_entities=include_entities)
        else:
            entities, more = parse_robust(doc)
        parser = f"spacy:{loaded.name}:{mode}"
    warnings.extend(more)
    return ParsedPrompt(prompt=prompt, entities=sort_entities(entities), parser=parser, warnings=tuple(warnings))
