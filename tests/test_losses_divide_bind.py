"""Spec §9.4: Divide & Bind tv_bind at i = 0 / 10 / 20, its pieces and the refinement indicator."""

from __future__ import annotations

import pytest
import torch
from binding_guidance.binding_losses import (
    AttentionLevel,
    DivideBindObjective,
    TokenBinding,
    TokenLayout,
    divide_bind_breakdown,
    divide_bind_loss,
    divide_bind_weight,
    subject_maps,
    total_variation,
    tv_bind,
)

TOL = 1e-6
DTYPES = [torch.float64, torch.float32]
OBJECTS = [(2,), (4,)]
ATTRIBUTES = [(1,), (3,)]


def object_attention(dtype: torch.dtype) -> torch.Tensor:
    """§9.3 A: softmax_k(2 sin(r + 2c + 3k)) as [1, 6, 4, 4]."""
    r = torch.arange(4, dtype=torch.float64).view(4, 1, 1)
    c = torch.arange(4, dtype=torch.float64).view(1, 4, 1)
    k = torch.arange(6, dtype=torch.float64).view(1, 1, 6)
    return torch.softmax(2 * torch.sin(r + 2 * c + 3 * k), dim=-1).permute(2, 0, 1).unsqueeze(0).to(dtype)


def attribute_attention(dtype: torch.dtype) -> torch.Tensor:
    """§9.4 Ac: softmax_k(2 cos(r - c + 2k)) as [1, 6, 4, 4]."""
    r = torch.arange(4, dtype=torch.float64).view(4, 1, 1)
    c = torch.arange(4, dtype=torch.float64).view(1, 4, 1)
    k = torch.arange(6, dtype=torch.float64).view(1, 1, 6)
    return torch.softmax(2 * torch.cos(r - c + 2 * k), dim=-1).permute(2, 0, 1).unsqueeze(0).to(dtype)


def close(actual: torch.Tensor | float, expected: object, tol: float = TOL) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    actual_t = torch.as_tensor(actual).detach().to(torch.float64).reshape(expected_t.shape)
    assert torch.allclose(actual_t, expected_t, atol=tol, rtol=0), (actual_t, expected_t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("step", "lam", "jsd_terms", "total"),
    [
        (0, 1.0, [0.00893447, 0.00465389], -0.21630286),
        (10, 5.0, [0.04467237, 0.02326945], -0.18056497),
        (20, 10.0, [0.08934474, 0.04653890], -0.13589259),
    ],
)
def test_tv_bind_table(dtype: torch.dtype, step: int, lam: float, jsd_terms: list[float], total: float) -> None:
    tol = TOL
    assert divide_bind_weight(step, 50) == lam
    out = divide_bind_breakdown(
        object_attention(dtype), OBJECTS, attribute_attention(dtype), ATTRIBUTES, bind_weight=lam
    )
    close(out.tv, [[0.22523734, 0.24775486]], tol)
    close(out.bind_jsd * lam, [jsd_terms], tol)
    close(out.total, [total], tol)
    close(out.indicator, [0.22523734], tol)
    close(
        tv_bind(object_attention(dtype), OBJECTS, attribute_attention(dtype), ATTRIBUTES, bind_weight=lam), [total], tol
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_tv_mode_and_binding_pieces(dtype: torch.dtype) -> None:
    tol = TOL
    objects, attrs = object_attention(dtype), attribute_attention(dtype)
    close(divide_bind_loss(objects, OBJECTS, attrs, ATTRIBUTES, mode="tv"), [-0.22523734], tol)
    obj_map = subject_maps(objects, [(2,)])[0, 0]
    attr_map = subject_maps(attrs, [(1,)])[0, 0]
    close(obj_map.max(), 0.54146580, tol)
    close(attr_map.max(), 0.64023921, tol)
    assert total_variation(obj_map).item() >= 0.1  # so the threshold fraction is 0.2
    out = divide_bind_breakdown(objects, OBJECTS, attrs, ATTRIBUTES)
    close(out.bind_jsd[0, 0], 0.0089344745, tol)


def test_refinement_decisions_from_indicator() -> None:
    objective = DivideBindObjective()
    objects, attrs = object_attention(torch.float64), attribute_attention(torch.float64)
    layout = TokenLayout(
        bindings=(TokenBinding((2,), ((1,),)), TokenBinding((4,), ((3,),))), prompt_positions=(1, 2, 3, 4)
    )
    attn = {4: AttentionLevel(objects, 40), 2: AttentionLevel(attrs, 40)}
    decisions = {}
    for step in (0, 10, 20):
        result = objective.loss(attn, layout, step, 50)
        close(result.metric, [0.22523734], TOL)
        refinement = objective.refinement(step, 50)
        assert refinement is not None
        decisions[step] = (refinement.continues(result, 0), refinement.max_iterations)
    assert decisions == {0: (False, 50), 10: (False, 20), 20: (True, 20)}
    latest = DivideBindObjective(refinement_caps="latest")
    assert [latest.refinement(s, 50).max_iterations for s in (0, 10, 20)] == [100, 50, 50]  # type: ignore[union-attr]
    # the paper-era notebooks cap max mode's first refinement at 20 (default_param), not 50
    max_mode = DivideBindObjective(loss_mode="max")
    assert [max_mode.refinement(s, 50).max_iterations for s in (0, 10, 20)] == [20, 20, 20]  # type: ignore[union-attr]


def test_objective_reproduces_table_with_attribute_level() -> None:
    objects, attrs = object_attention(torch.float64), attribute_attention(torch.float64)
    layout = TokenLayout(
        bindings=(TokenBinding((2,), ((1,), (5,))), TokenBinding((4,), ((3,),))), prompt_positions=(1, 2, 3, 4)
    )
    objective = DivideBindObjective()
    assert objective.levels(4) == {4, 2, 1}
    assert objective.levels(2) == {2, 1}
    assert DivideBindObjective(loss_mode="tv").levels(4) == {4}
    # a 2x finer attribute level that downsamples (nearest) to exactly Ac
    fine = attrs.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    attn = {4: AttentionLevel(objects, 40), 2: AttentionLevel(fine, 40)}
    for step, total in ((0, -0.21630286), (10, -0.18056497), (20, -0.13589259)):
        result = objective.loss(attn, layout, step, 50)
        assert result.total.dtype == torch.float32
        close(result.total, [total], TOL)


def test_attribute_levels_merge_by_count() -> None:
    objective = DivideBindObjective()
    a32 = torch.rand(1, 6, 8, 8, dtype=torch.float64)
    a64 = torch.rand(1, 6, 16, 16, dtype=torch.float64)
    merged = objective._attribute_source({2: AttentionLevel(a32, 2), 1: AttentionLevel(a64, 6)}, 4, (4, 4))
    expected = (a32[..., ::2, ::2] * 2 + a64[..., ::4, ::4] * 6) / 8
    assert merged is not None
    close(merged, expected.float(), 1e-6)


def test_no_attribute_and_no_objects() -> None:
    objects = object_attention(torch.float64)
    out = divide_bind_breakdown(objects, OBJECTS, None, [None, None])
    close(out.bind_jsd, [[0.0, 0.0]])
    close(out.total, [-0.22523734])
    maps = objects.clone().requires_grad_()
    zero = divide_bind_loss(maps, [])
    assert zero.shape == (1,) and zero.item() == 0.0
    zero.sum().backward()


def test_other_modes() -> None:
    objects = object_attention(torch.float64)
    maxima = torch.tensor([0.54146580, 0.45925153], dtype=torch.float64)
    tv = torch.tensor([0.22523734, 0.24775486], dtype=torch.float64)
    close(divide_bind_loss(objects, OBJECTS, mode="max"), [-maxima.min()])
    close(divide_bind_loss(objects, OBJECTS, mode="tv_max"), [-(tv + 0.3 * maxima).min()])
    out = divide_bind_breakdown(objects, OBJECTS, mode="max")
    close(out.indicator, [maxima.min()])
    assert DivideBindObjective(loss_mode="max").thresholds == (0.05, 0.5, 0.8)
    with pytest.raises(ValueError, match="mode"):
        divide_bind_loss(objects, OBJECTS, mode="nope")
