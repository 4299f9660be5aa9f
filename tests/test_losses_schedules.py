"""Spec §9.6 step sizes, guided horizons, refinement points and D&B λ stages."""

from __future__ import annotations

import pytest
from binding_guidance.binding_losses import (
    AttendExciteObjective,
    DivideBindObjective,
    SynGenObjective,
    TSAMObjective,
    decaying_step_size,
    divide_bind_weight,
    is_guided,
    refinement_indices,
    refinement_phase,
    scaled_index,
)
from binding_guidance.binding_losses.schedules import round_half_up

STEP_TABLE = [
    (0, 20.0, 20.0),
    (1, 19.897698, 19.899749),
    (10, 18.952142, 18.973666),
    (20, 17.842851, 17.888544),
    (24, 17.379322, 17.435596),
    (29, 16.781914, 16.852300),
]


@pytest.mark.parametrize(("step", "n50", "n51"), STEP_TABLE)
def test_step_size_table(step: int, n50: float, n51: float) -> None:
    assert decaying_step_size(20.0, step, 50) == pytest.approx(n50, abs=1e-6)
    assert decaying_step_size(20.0, step, 51) == pytest.approx(n51, abs=1e-6)
    assert AttendExciteObjective().step_size(step, 50) == pytest.approx(n50, abs=1e-6)
    assert DivideBindObjective().step_size(step, 51) == pytest.approx(n51, abs=1e-6)
    assert TSAMObjective().step_size(step, 50) == pytest.approx(n50 / 4, abs=1e-6)
    assert TSAMObjective().step_size(step, 51) == pytest.approx(n51 / 4, abs=1e-6)


def test_last_step_is_half_and_single_step() -> None:
    assert decaying_step_size(20.0, 49, 50) == pytest.approx(20.0 * 0.5**0.5)
    assert decaying_step_size(20.0, 0, 1) == 20.0


def test_syngen_constant_step_and_horizon() -> None:
    objective = SynGenObjective()
    assert all(objective.step_size(i, 50) == 20.0 for i in range(50))
    assert [i for i in range(50) if objective.guides(i, 50)] == list(range(25))
    assert objective.refinement(0, 50) is None


def test_horizons() -> None:
    assert scaled_index(0.5, 50) == 25
    assert scaled_index(0.5, 51) == 26
    assert scaled_index(0.5, 25) == 13  # half rounds up
    assert round_half_up(12.5) == 13 and round_half_up(12.49) == 12
    assert [i for i in range(50) if TSAMObjective().guides(i, 50)] == list(range(30))
    assert [i for i in range(50) if TSAMObjective(loss_type="paper").guides(i, 50)] == list(range(25))
    assert not is_guided(25, 50, 0.5) and is_guided(24, 50, 0.5)
    assert not is_guided(0, 50, 0.0)


def test_refinement_points() -> None:
    assert refinement_indices(50) == (0, 10, 20)
    assert refinement_indices(51) == (0, 10, 20)
    assert refinement_indices(30) == (0, 6, 12)
    assert refinement_indices(25) == (0, 5, 10)
    assert [refinement_phase(i, 50) for i in (0, 10, 20, 5)] == [0, 1, 2, None]
    assert refinement_phase(0, 1) == 0  # collisions at tiny N: the first point wins


def test_ae_thresholds_scale_with_steps() -> None:
    objective = AttendExciteObjective()
    assert [objective.refinement(i, 30) is not None for i in (0, 6, 12)] == [True, True, True]
    assert objective.refinement(10, 30) is None
    assert AttendExciteObjective(refine=False).refinement(0, 50) is None


@pytest.mark.parametrize(("step", "lam"), [(0, 1.0), (9, 1.0), (10, 5.0), (19, 5.0), (20, 10.0), (40, 10.0)])
def test_divide_bind_weight_stages(step: int, lam: float) -> None:
    assert divide_bind_weight(step, 50) == lam


def test_divide_bind_weight_scaled() -> None:
    assert [divide_bind_weight(i, 30) for i in (5, 6, 11, 12)] == [1.0, 5.0, 5.0, 10.0]
