"""Attend-and-Excite loss (spec §4): the worst subject's smoothed max attention, pushed towards 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..settings import Bounds, setting
from ._util import as_batched, check_positions, zero_total
from .base import ITERATIONS, UNIT_THRESHOLDS, LossResult, Refinement, fp32_maps, metric_above, select_main_level
from .schedules import AE_THRESHOLDS
from .smoothing import DEFAULT_KERNEL_SIZE, DEFAULT_SIGMA, gaussian_smooth
from .subjects import MapOptions, SubjectObjective, subject_words
from .token_maps import CHUNK_SIZE, ColumnRange, token_softmax, word_maps
from .types import AttentionLevel, TokenLayout, Word

if TYPE_CHECKING:
    from typing_extensions import Unpack

KERNEL_SIZES = (1, 3, 5, 7, 9)
SIGMA = Bounds(0.0, 10.0, exclusive_minimum=True)


def subject_maps(
    maps: torch.Tensor,
    subjects: Sequence[Word],
    *,
    smooth: bool = True,
    scale: float = 100.0,
    keep: ColumnRange | Sequence[ColumnRange] | None = None,
    chunk_size: int = CHUNK_SIZE,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> torch.Tensor:
    """A&E / D&B map processing: token softmax (per chunk, ×``scale``), select words, smooth.

    ``maps`` ``[B, K, H, W]`` raw aggregated probabilities -> ``[B, S, H, W]``. Smoothing is applied to each
    piece's map before the pixelwise max over a word's pieces.
    """
    maps = as_batched(maps)
    check_positions({p for word in subjects for p in word}, maps.shape[1])
    probs = token_softmax(maps, scale=scale, keep=keep, chunk_size=chunk_size)
    if not subjects:
        return probs[:, :0]
    needed = sorted({p for word in subjects for p in word})
    picked = probs[:, needed]
    if smooth:
        picked = gaussian_smooth(picked, kernel_size, sigma)
    local = {pos: i for i, pos in enumerate(needed)}
    return word_maps(picked, [tuple(local[p] for p in word) for word in subjects])


def attend_excite_maxima(maps: torch.Tensor, subjects: Sequence[Word], **options: Unpack[MapOptions]) -> torch.Tensor:
    """Max over pixels of each processed subject map: ``[B, S]`` (see :func:`subject_maps` for options)."""
    return subject_maps(maps, subjects, **options).flatten(-2).amax(dim=-1)


def worst_shortfall(maxima: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` subject maxima -> ``[B]``: ``max_s max(0, 1 - maxima_s)``, the A&E loss."""
    return (1.0 - maxima).clamp(min=0.0).amax(dim=-1)


def attend_excite_loss(maps: torch.Tensor, subjects: Sequence[Word], **options: Unpack[MapOptions]) -> torch.Tensor:
    """A&E loss per batch item ``[B]``: ``max_s max(0, 1 - max_pixels(map_s))``; zeros with no subjects.

    ``options`` are :func:`subject_maps`'s; ``keep`` selects the softmax columns per chunk (default: drop SOT and
    the last column, i.e. columns 1..75 of each 77-token chunk; ``(1, E)`` reproduces SD 2.x ``normalize_eot``).
    """
    maps = as_batched(maps)
    if not subjects:
        return zero_total(maps)
    return worst_shortfall(attend_excite_maxima(maps, subjects, **options))


@dataclass
class AttendExciteObjective(SubjectObjective):
    """Attend-and-Excite (spec §4): refine at {0, 0.2N, 0.4N} while the loss is above 1 - threshold."""

    name: ClassVar[str] = "attend_and_excite"
    thresholds: tuple[float, float, float] = setting(
        AE_THRESHOLDS,
        "smallest max attention each subject must reach at the three refinement points (refinement continues "
        "while the loss is above 1 - threshold)",
        bounds=UNIT_THRESHOLDS,
    )
    max_refinement_steps: int = setting(
        20, "most refinement iterations at one refinement point", bounds=ITERATIONS,
        hint="use 'refine = false' to switch refinement off",
    )
    kernel_size: int = setting(DEFAULT_KERNEL_SIZE, "Gaussian smoothing kernel size (odd)", choices=KERNEL_SIZES)
    sigma: float = setting(DEFAULT_SIGMA, "Gaussian smoothing sigma", bounds=SIGMA)

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
        """A&E loss on the main level; ``terms["maxima"]`` is ``[B, S]``."""
        maps = fp32_maps(select_main_level(attn))
        subjects = subject_words(layout)
        if not subjects:
            zero = zero_total(maps)
            return LossResult(total=zero, metric=zero.detach(), terms={})
        options = self.map_options(layout, maps.shape[1])
        maxima = attend_excite_maxima(maps, subjects, **options, kernel_size=self.kernel_size, sigma=self.sigma)
        total = worst_shortfall(maxima)
        return LossResult(total=total, metric=total.detach(), terms={"maxima": maxima.detach()})

    def refinement_at(self, phase: int) -> Refinement:
        """Continue while loss > 1 - threshold, at most ``max_refinement_steps`` (``stop_rule`` faithful: judged
        one update late, as the reference)."""
        rule = metric_above(1.0 - self.thresholds[phase])
        return Refinement(self.max_refinement_steps, rule, lagged=self.stop_rule == "faithful")
