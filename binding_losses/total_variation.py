"""Total variation of 2-D maps, in the three forms D&B needs."""

from __future__ import annotations

import torch

TV_VARIANTS = ("faithful", "fixed", "paper")


def total_variation(maps: torch.Tensor, variant: str = "faithful") -> torch.Tensor:
    """Total variation of ``[..., H, W]`` maps; returns ``[...]``.

    - ``"faithful"``: the D&B code. Mean absolute horizontal difference plus the mean of
      ``|X[H-1, c] - X[r, c]|`` over rows ``r = 1..H-1`` (the reference's last-row broadcasting typo).
    - ``"fixed"``: both terms are means of neighbour differences (correct vertical term).
    - ``"paper"``: the paper's sum of horizontal and vertical neighbour differences.
    A side of length 1 contributes 0 for its direction.
    """
    if variant not in TV_VARIANTS:
        raise ValueError(f"unknown TV variant {variant!r}; expected one of {TV_VARIANTS}")
    horizontal = (maps[..., :, :-1] - maps[..., :, 1:]).abs()
    if variant == "faithful":
        vertical = (maps[..., -1:, :] - maps[..., 1:, :]).abs()
    else:
        vertical = (maps[..., :-1, :] - maps[..., 1:, :]).abs()
    reduce = torch.sum if variant == "paper" else torch.mean

    def _term(diff: torch.Tensor) -> torch.Tensor:
        if diff.shape[-1] == 0 or diff.shape[-2] == 0:
            return maps.new_zeros(maps.shape[:-2])
        return reduce(diff, dim=(-2, -1))

    return _term(horizontal) + _term(vertical)
