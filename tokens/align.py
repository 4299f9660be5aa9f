"""Parser entities (character spans of the clean prompt) -> CLIP context positions (a ``TokenLayout``).

``parsed`` is duck-typed: it needs ``.prompt`` and ``.entities``; each entity has ``.noun``, ``.modifiers`` and
``.negated``; each word has ``.text``, ``.start``, ``.end`` (offsets into ``parsed.prompt``, the clean text).
A word takes every text token whose original-character span overlaps the word's original characters, so
repeated words ("a red car and a red bike") bind by position, never by text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clip_tokens import TokenTable
from .prompt_text import CleanPrompt
from .qwen_tokens import QWEN_KEYS
from .t5_tokens import T5_KEY

SEQUENCE_ENCODERS = frozenset({T5_KEY, *QWEN_KEYS})
"""Encoders whose context is one token sequence (no 77-token chunks, no start token): T5, Qwen3."""

if TYPE_CHECKING:  # binding_losses/__init__ imports torch; the dataclasses are imported where they are built
    from ..binding_losses.types import TokenLayout


@dataclass(frozen=True)
class AlignedWord:
    """A parser word and its CLIP context positions."""

    text: str
    start: int
    end: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class AlignedEntity:
    """An entity that made it into the layout."""

    noun: AlignedWord
    modifiers: tuple[AlignedWord, ...]
    skipped: tuple[str, ...] = ()
    """Modifier texts left out (negated, or aligned to nothing)."""


@dataclass(frozen=True)
class AlignmentResult:
    """The layout for the guidance engine, the per-entity detail, and human-readable warnings."""

    layout: TokenLayout
    entities: tuple[AlignedEntity, ...]
    warnings: tuple[str, ...]


def word_positions(clean: CleanPrompt, table: TokenTable, start: int, end: int) -> tuple[int, ...]:
    """Context positions of the tokens made from the clean-text characters ``[start, end)``."""
    return table.positions_for_chars(clean.original_indices(start, end))


def _key(word: Any) -> tuple[str, int, int]:
    return (str(word.text), int(word.start), int(word.end))


def _align_word(word: Any, clean: CleanPrompt, table: TokenTable, warnings: list[str]) -> AlignedWord | None:
    try:
        start, end = int(word.start), int(word.end)
        positions = word_positions(clean, table, start, end)
    except (ValueError, TypeError, AttributeError) as exc:
        warnings.append(f"word {getattr(word, 'text', word)!r}: bad span ({exc})")
        return None
    if clean.text[start:end] != word.text:
        warnings.append(f"word {word.text!r} does not match clean text {clean.text[start:end]!r} at {start}:{end}")
    return AlignedWord(str(word.text), start, end, positions)


def align_entities(
    parsed: Any,
    clean: CleanPrompt,
    table: TokenTable,
    *,
    skip_negated: bool = True,
    include_embeddings: bool = True,
) -> AlignmentResult:
    """Map every entity of ``parsed`` to context positions.

    - The noun takes all pieces overlapping its span; each modifier becomes one tuple of positions.
    - Modifiers listed in ``negated`` are left out when ``skip_negated``; modifiers that align to nothing are left out
      with a warning. Entities whose noun aligns to nothing are dropped with a warning.
    - ``prompt_positions`` holds every text token in every chunk (and embedding vectors, unless
      ``include_embeddings`` is false); never SOT, EOT or padding.
    """
    from ..binding_losses.types import TokenBinding, TokenLayout

    if str(parsed.prompt) != clean.text:
        raise ValueError("parsed.prompt is not the clean text: parse strip_comfy_syntax(text).text")
    warnings: list[str] = list(table.warnings)
    bindings: list[TokenBinding] = []
    entities: list[AlignedEntity] = []
    for entity in parsed.entities:
        noun = _align_word(entity.noun, clean, table, warnings)
        if noun is None or not noun.positions:
            warnings.append(
                f"noun {entity.noun.text!r} has no CLIP tokens (it may lie past a dropped part); entity dropped"
            )
            continue
        negated = {_key(w) for w in (getattr(entity, "negated", ()) or ())}
        modifiers: list[AlignedWord] = []
        skipped: list[str] = []
        for word in _iter(entity.modifiers):
            if skip_negated and _key(word) in negated:
                skipped.append(str(word.text))
                continue
            aligned = _align_word(word, clean, table, warnings)
            if aligned is None or not aligned.positions:
                warnings.append(f"modifier {word.text!r} of {noun.text!r} has no CLIP tokens; left out")
                skipped.append(str(word.text))
                continue
            modifiers.append(aligned)
        bindings.append(TokenBinding(noun.positions, tuple(m.positions for m in modifiers)))
        entities.append(AlignedEntity(noun, tuple(modifiers), tuple(skipped)))
    layout = TokenLayout(
        bindings=tuple(bindings),
        prompt_positions=table.prompt_positions(include_embeddings=include_embeddings),
        context_length=table.context_length,
        clip_chunks=not SEQUENCE_ENCODERS.intersection(table.encoders),
    )
    return AlignmentResult(layout, tuple(entities), tuple(warnings))


def _iter(words: Iterable[Any] | None) -> Iterable[Any]:
    return words or ()


def describe_table(table: TokenTable, *, show_padding: bool = False) -> str:
    """Human-readable table: position, chunk:index, piece, original span and text. Padding runs are summarised."""
    lines = [
        f"{table.num_chunks} chunk(s) x {table.chunk_length}, context {table.context_length}, "
        f"encoders {','.join(table.encoders)}"
    ]
    pad_run: list[int] = []

    def flush() -> None:
        if pad_run:
            lines.append(f"  ... {len(pad_run)} padding token(s) at {pad_run[0]}-{pad_run[-1]}")
            pad_run.clear()

    for tok in table.tokens:
        if tok.kind == "pad" and not show_padding:
            pad_run.append(tok.position)
            continue
        flush()
        where = f"{tok.chunk}:{tok.index}"
        if tok.span is not None:
            chars = f"{tok.start}-{tok.end} {table.text[tok.start : tok.end]!r}"
        else:
            chars = f"[{tok.kind}]"
        weight = f" w={tok.weight:g}" if tok.weight != 1.0 else ""
        lines.append(f"{tok.position:5d}  {where:>6}  {tok.piece:<20} {chars}{weight}")
    flush()
    lines.extend(f"warning: {w}" for w in table.warnings)
    return "\n".join(lines)


def _positions_text(table: TokenTable, positions: tuple[int, ...]) -> str:
    """Original text covered by ``positions`` (pieces joined), with the positions."""
    spans = [table[p].span for p in positions if 0 <= p < len(table)]
    spans = [s for s in spans if s is not None]
    text = table.text[min(s[0] for s in spans) : max(s[1] for s in spans)] if spans else "?"
    return f"{text!r}@{','.join(str(p) for p in positions)}"


def describe_layout(layout: TokenLayout, table: TokenTable) -> str:
    """One line per binding: noun and modifiers with their original text and context positions."""
    chunks = f"{table.num_chunks} chunk(s)" if table.num_chunks != 1 else "1 chunk"
    lines = [
        f"{len(layout.bindings)} binding(s); {len(layout.prompt_positions)} prompt tokens; {chunks}, "
        f"context {layout.context_length}"
    ]
    for binding in layout.bindings:
        mods = ", ".join(_positions_text(table, m) for m in binding.modifiers) or "(no modifiers)"
        lines.append(f"  {_positions_text(table, binding.noun)} <- {mods}")
    return "\n".join(lines)


def find_words(clean: CleanPrompt, table: TokenTable, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """CLIP positions of each word (whole-word, case-insensitive, earliest unused occurrence in the prompt).

    Raises ValueError naming the first word that is not in the prompt.
    """
    used: set[int] = set()
    found: list[tuple[int, ...]] = []
    for word in words:
        pattern = re.compile(r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)", re.IGNORECASE)
        match = next((m for m in pattern.finditer(clean.text) if m.start() not in used), None)
        if match is None:
            raise ValueError(f"'{word.strip()}' is not a word of the prompt '{clean.text}'.")
        used.add(match.start())
        positions = word_positions(clean, table, match.start(), match.end())
        if not positions:
            raise ValueError(f"'{word.strip()}' has no CLIP tokens in the prompt (was it inside an embedding?).")
        found.append(positions)
    return tuple(found)
