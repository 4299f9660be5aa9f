"""Token-axis processing shared by A&E and D&B: per-chunk column drop + temperature softmax, word maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .types import Word

CHUNK_SIZE = 77

ColumnRange = tuple[int, int]


def chunk_ranges(
    num_tokens: int, keep: ColumnRange | Sequence[ColumnRange] | None = None, chunk_size: int = CHUNK_SIZE
) -> list[ColumnRange]:
    """Absolute ``[start, stop)`` column ranges of the token softmax, one per ``chunk_size`` chunk.

    ``keep=None`` drops the first and last column of every chunk (SD 1.x: columns 1..75 of each 77).
    A single ``(start, stop)`` applies inside every chunk (e.g. ``(1, E)`` for SD 2.x ``normalize_eot``);
    a sequence gives one range per chunk. Ranges are clipped to the chunk.
    """
    ranges: list[ColumnRange] = []
    for chunk, offset in enumerate(range(0, num_tokens, chunk_size)):
        length = min(chunk_size, num_tokens - offset)
        if keep is None:
            start, stop = 1, length - 1
        elif isinstance(keep[0], int):
            start, stop = keep  # type: ignore[misc]
        else:
            per_chunk = list(keep)  # type: ignore[arg-type]
            if chunk >= len(per_chunk):
                continue
            start, stop = per_chunk[chunk]
        start, stop = max(0, int(start)), min(length, int(stop))
        if stop > start:
            ranges.append((offset + start, offset + stop))
    return ranges


def token_softmax(
    maps: torch.Tensor,
    scale: float = 100.0,
    keep: ColumnRange | Sequence[ColumnRange] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """A&E's token re-softmax on ``[..., K, H, W]``: per chunk, keep the columns ``keep`` (default: drop the
    first and last), multiply by ``scale`` and softmax over them at every pixel.

    The output keeps the K axis so positions still index it; dropped columns are 0.
    """
    num_tokens = maps.shape[-3]
    out = torch.zeros_like(maps)
    for start, stop in chunk_ranges(num_tokens, keep, chunk_size):
        out[..., start:stop, :, :] = torch.softmax(maps[..., start:stop, :, :] * scale, dim=-3)
    return out


def word_maps(maps: torch.Tensor, words: Sequence[Word]) -> torch.Tensor:
    """``[B, K, H, W]`` -> ``[B, len(words), H, W]``; a multi-piece word is the pixelwise max of its pieces."""
    if not words:
        return maps[:, :0]
    return torch.stack([maps[:, list(word)].amax(dim=1) for word in words], dim=1)
