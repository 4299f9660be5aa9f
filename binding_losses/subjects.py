"""What A&E and D&B guide: subject and attribute words of a layout, and their shared token-softmax settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from ..settings import setting
from .base import SOFTMAX_SCALE, DecayingSchedule
from .token_maps import CHUNK_SIZE, ColumnRange
from .types import TokenLayout, Word


class MapOptions(TypedDict, total=False):
    """Keyword options of :func:`~.attend_excite.subject_maps`, passed through by the A&E and D&B losses."""

    smooth: bool
    scale: float
    keep: ColumnRange | Sequence[ColumnRange] | None
    chunk_size: int
    kernel_size: int
    sigma: float


def subject_words(layout: TokenLayout) -> tuple[Word, ...]:
    """A&E / D&B subjects: ``layout.subjects`` when given, else the nouns of ``layout.bindings``."""
    if layout.subjects:
        return tuple(layout.subjects)
    return tuple(binding.noun for binding in layout.bindings)


def attribute_words(layout: TokenLayout) -> tuple[Word | None, ...]:
    """D&B attribute per subject: the first modifier of the binding with that noun, else ``None``."""
    first_modifier = {b.noun: (b.modifiers[0] if b.modifiers else None) for b in layout.bindings}
    return tuple(first_modifier.get(word) for word in subject_words(layout))


def eot_columns(layout: TokenLayout, num_tokens: int) -> list[ColumnRange]:
    """SD 2.x ``normalize_eot`` softmax columns per 77-chunk: ``(1, E)`` with E one past the chunk's last prompt
    token (an empty range for chunks without prompt tokens)."""
    ranges: list[ColumnRange] = []
    for offset in range(0, num_tokens, CHUNK_SIZE):
        inside = [p - offset for p in layout.prompt_positions if offset <= p < offset + CHUNK_SIZE]
        ranges.append((1, max(inside) + 1) if inside else (1, 1))
    return ranges


@dataclass
class SubjectObjective(DecayingSchedule):
    """A&E and D&B: a temperature softmax over the prompt tokens, then one map per subject word."""

    softmax_scale: float = setting(100.0, "temperature of the softmax over prompt tokens", bounds=SOFTMAX_SCALE)
    normalize_eot: bool = setting(False, "SD2.x-style softmax that includes the end-of-text token")

    def softmax_columns(self, layout: TokenLayout, num_tokens: int) -> list[ColumnRange] | None:
        """The token-softmax columns: up to each chunk's end-of-text with ``normalize_eot``, else the default. A T5
        context (Flux.1, SD3's T5 segment; ``layout.clip_chunks`` False) has no start token to drop and pads to
        256 and beyond: one range over its prompt tokens."""
        if not layout.clip_chunks:
            positions = layout.prompt_positions or (0,)
            return [(min(positions), max(positions) + 1)]
        return eot_columns(layout, num_tokens) if self.normalize_eot else None

    @staticmethod
    def softmax_chunk(layout: TokenLayout, num_tokens: int) -> int:
        """Columns per token softmax: CLIP's 77-token chunks, or the whole T5 context."""
        return CHUNK_SIZE if layout.clip_chunks else num_tokens

    def map_options(self, layout: TokenLayout, num_tokens: int) -> MapOptions:
        """The token-softmax options of :func:`~.attend_excite.subject_maps` for this objective and layout."""
        return MapOptions(
            smooth=self.smooth,
            scale=self.softmax_scale,
            keep=self.softmax_columns(layout, num_tokens),
            chunk_size=self.softmax_chunk(layout, num_tokens),
        )
