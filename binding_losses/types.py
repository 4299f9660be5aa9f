"""Plain data types shared by the losses, the token aligner and the guidance engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Word = tuple[int, ...]
"""CLIP context positions of one word, one per BPE piece (e.g. ``(2, 3)`` for "chec", "kered")."""


@dataclass(frozen=True)
class TokenBinding:
    """One entity: its noun and the modifiers bound to it, as CLIP context positions."""

    noun: Word
    modifiers: tuple[Word, ...] = ()

    @property
    def positions(self) -> frozenset[int]:
        """Every position that belongs to this binding (noun and modifiers)."""
        out = set(self.noun)
        for word in self.modifiers:
            out.update(word)
        return frozenset(out)


@dataclass(frozen=True)
class TokenLayout:
    """Where a prompt's bindings sit in the conditioning context.

    ``prompt_positions`` lists every real prompt token (no SOT, EOT or padding, in any chunk);
    it is the universe from which SynGen draws a binding's unrelated set.
    """

    bindings: tuple[TokenBinding, ...]
    prompt_positions: tuple[int, ...]
    context_length: int = 77
    subjects: tuple[Word, ...] = field(default=())
    """Optional explicit subject words (A&E/D&B override); empty means "the nouns of ``bindings``"."""
    clip_chunks: bool = True
    """Positions sit in CLIP's 77-token chunks, each opened by a start token. False for one T5 sequence (Flux.1):
    no start token, so the token softmax of A&E and D&B runs over the prompt tokens of the whole context."""


@dataclass
class AttentionLevel:
    """Cross-attention probabilities recorded at one spatial level.

    ``mean`` is ``[B, K, H, W]``: the plain mean over every recorded (layer, head) map at this level,
    conditional rows only. ``count`` is how many (layer, head) maps went into the mean, so levels can be
    merged into one plain mean.
    """

    mean: torch.Tensor
    count: int
