"""Small shared helpers for the loss modules (shape checks, dtype, zero totals)."""

from __future__ import annotations

import torch


def as_batched(maps: torch.Tensor) -> torch.Tensor:
    """Return ``[B, K, H, W]``: a ``[K, H, W]`` input becomes a batch of one."""
    if maps.dim() == 3:
        return maps.unsqueeze(0)
    if maps.dim() != 4:
        raise ValueError(f"attention maps must be [B, K, H, W] or [K, H, W], got shape {tuple(maps.shape)}")
    return maps


def zero_total(maps: torch.Tensor) -> torch.Tensor:
    """Zeros of shape ``[B]`` that stay connected to ``maps``' graph, so ``backward()`` never fails."""
    return maps.reshape(maps.shape[0], -1)[:, :0].sum(dim=-1)


def check_positions(positions: set[int] | frozenset[int], num_tokens: int) -> None:
    """Raise a clear ``ValueError`` for positions outside ``[0, num_tokens)``."""
    bad = sorted(p for p in positions if p < 0 or p >= num_tokens)
    if bad:
        raise ValueError(f"token positions {bad} are outside the attention maps' K = {num_tokens} columns")
