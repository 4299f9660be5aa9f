"""Step sizes, guided-step horizons and refinement points (spec §1.3, §1.6.5, §9.6).

All indices are the sampler's loop index ``i`` over ``num_steps`` steps. The reference fixes 50 steps;
for other step counts the fractions scale as ``round(frac * N)`` (half rounds up, so 12.5 -> 13).
"""

from __future__ import annotations

import math

REFINEMENT_FRACTIONS = (0.0, 0.2, 0.4)
"""Refinement points {0, 10, 20} of a 50-step run, as fractions of the step count."""

AE_THRESHOLDS = (0.05, 0.5, 0.8)
"""A&E minimum smoothed max attention at the three refinement points (loss target = 1 - threshold)."""

DB_TV_THRESHOLDS = (0.05, 0.2, 0.3)
"""D&B: refine while min TV of the object maps is below these (``tv`` / ``tv_bind`` modes)."""

DB_MAX_THRESHOLDS = (0.05, 0.5, 0.8)
"""D&B ``max`` mode: refine while the min smoothed max attention is below these."""

DB_REFINEMENT_CAPS = {"paper": (50, 20, 20), "latest": (100, 50, 50)}
"""D&B iteration caps at the three refinement points: paper-era pipeline vs the latest pipeline."""

DB_PAPER_MAX_MODE_CAPS = (20, 20, 20)
"""Paper-era D&B caps in ``max`` mode: its notebooks' ``default_param`` caps the first refinement at 20 there."""

DB_BIND_WEIGHTS = (1.0, 5.0, 10.0)
"""D&B λ for the binding term: i < 10, 10 <= i < 20, i >= 20 (scaled for N != 50)."""

def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (``round(12.5) == 13``), tolerant of float noise."""
    return math.floor(value + 0.5 + 1e-9)


def scaled_index(fraction: float, num_steps: int) -> int:
    """``round(fraction * num_steps)``: e.g. 0.5 -> 25 for 50 steps."""
    return round_half_up(fraction * num_steps)


def is_guided(step: int, num_steps: int, fraction: float) -> bool:
    """True for loop indices ``i < round(fraction * N)`` (the reference's ``i < max_iter_to_alter``)."""
    return 0 <= step < scaled_index(fraction, num_steps)


def decay_factor(step: int, num_steps: int) -> float:
    """``sqrt(linspace(1, 0.5, N)[i])``; 1.0 for a single step."""
    if num_steps <= 1:
        return 1.0
    clamped = min(max(step, 0), num_steps - 1)
    return math.sqrt(1.0 - 0.5 * clamped / (num_steps - 1))


def decaying_step_size(scale: float, step: int, num_steps: int) -> float:
    """A&E / D&B / T-SAM step size ``scale * sqrt(linspace(1, 0.5, N)[i])`` (§9.6)."""
    return scale * decay_factor(step, num_steps)


def refinement_indices(num_steps: int) -> tuple[int, ...]:
    """The three refinement loop indices ``(0, round(0.2 N), round(0.4 N))``: (0, 10, 20) at N = 50."""
    return tuple(scaled_index(f, num_steps) for f in REFINEMENT_FRACTIONS)


def refinement_phase(step: int, num_steps: int) -> int | None:
    """Which refinement point (0, 1 or 2) ``step`` is, or ``None``. On collisions (tiny N) the first wins."""
    for phase, index in enumerate(refinement_indices(num_steps)):
        if step == index:
            return phase
    return None


def stage(step: int, num_steps: int) -> int:
    """0 before ``round(0.2 N)``, 1 before ``round(0.4 N)``, else 2 (D&B's λ stage)."""
    _, first, second = refinement_indices(num_steps)
    if step < first:
        return 0
    if step < second:
        return 1
    return 2


def divide_bind_weight(step: int, num_steps: int, weights: tuple[float, float, float] = DB_BIND_WEIGHTS) -> float:
    """D&B binding weight λ_i: 1 / 5 / 10 by stage (i < 10, < 20, >= 20 at N = 50)."""
    return float(weights[stage(step, num_steps)])


def divide_bind_refinement_caps(caps: str, loss_mode: str) -> tuple[int, int, int]:
    """D&B iteration caps at the three refinement points for ``caps`` ("paper" or "latest") and a loss mode."""
    if caps == "paper" and loss_mode == "max":
        return DB_PAPER_MAX_MODE_CAPS
    return DB_REFINEMENT_CAPS[caps]


def tsam_threshold(num_tokens: int) -> float:
    """T-SAM refinement threshold τ(n) = 0.14 (n - 1) for n prompt tokens, in double precision.

    The reference holds τ for n in {5, 6, 7} only (``KeyError`` for any other n) and computes it as this product,
    so τ(6) is 0.7000000000000001, not 0.7; every n here uses the same product (docs/refinement.md).
    """
    return 0.14 * (num_tokens - 1)
