"""Spec §9.5: T-SAM text matrix T, similarity C and S, code loss (with / without smoothing), paper loss."""

from __future__ import annotations

import math

import pytest
import torch
from binding_guidance.binding_losses import (
    AttentionLevel,
    LossResult,
    TokenLayout,
    TSAMObjective,
    cross_attention_similarity,
    row_normalize,
    text_attention_matrix,
    tsam_code_row_terms,
    tsam_loss,
    tsam_paper_row_terms,
    tsam_threshold,
)

TOL = 1e-6
DTYPES = [torch.float64, torch.float32]
POSITIONS = [1, 2, 3, 4]

RAW_TEXT = [
    [1.00, 0, 0, 0, 0, 0],
    [0.80, 0.20, 0, 0, 0, 0],
    [0.70, 0.20, 0.10, 0, 0, 0],
    [0.60, 0.05, 0.25, 0.10, 0, 0],
    [0.50, 0.05, 0.05, 0.30, 0.10, 0],
    [0.40, 0.10, 0.10, 0.10, 0.10, 0.20],
]
EXPECTED_T = [
    [0.9999875, 0, 0, 0],
    [0.88887901, 0.11110988, 0, 0],
    [0.00746264, 0.93283025, 0.05970114, 0],
    [0.00442476, 0.00442476, 0.95574883, 0.0353981],
]
EXPECTED_C = [
    [1, 0, 0, 0],
    [0.77785042, 1, 0, 0],
    [0.98848578, 0.79959371, 1, 0],
    [0.77754513, 0.99053351, 0.78178783, 1],
]
EXPECTED_S = [
    [1, 0, 0, 0],
    [0.43752298, 0.56247702, 0, 0],
    [0.35454003, 0.28679014, 0.35866983, 0],
    [0.21903504, 0.27903402, 0.22023021, 0.28170074],
]


def spec_attention(dtype: torch.dtype) -> torch.Tensor:
    """§9.3 A as [1, 6, 4, 4]."""
    r = torch.arange(4, dtype=torch.float64).view(4, 1, 1)
    c = torch.arange(4, dtype=torch.float64).view(1, 4, 1)
    k = torch.arange(6, dtype=torch.float64).view(1, 1, 6)
    return torch.softmax(2 * torch.sin(r + 2 * c + 3 * k), dim=-1).permute(2, 0, 1).unsqueeze(0).to(dtype)


def close(actual: torch.Tensor, expected: object, tol: float = TOL) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    actual_t = actual.detach().to(torch.float64).reshape(expected_t.shape)
    assert torch.allclose(actual_t, expected_t, atol=tol, rtol=0), (actual_t, expected_t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_text_matrix(dtype: torch.dtype) -> None:
    raw = torch.tensor(RAW_TEXT, dtype=dtype)
    close(text_attention_matrix(raw), EXPECTED_T)
    close(text_attention_matrix(raw, tokens=range(1, 5), power=3), EXPECTED_T)
    # a 77x77 capture with EOT at 5 gives the same T
    big = torch.zeros(77, 77, dtype=dtype)
    big[:6, :6] = raw
    close(text_attention_matrix(big, tokens=POSITIONS), EXPECTED_T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_similarity_and_normalised_similarity(dtype: torch.dtype) -> None:
    c = cross_attention_similarity(spec_attention(dtype), POSITIONS)
    close(c, [EXPECTED_C])
    close(row_normalize(c), [EXPECTED_S])


def spec_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's cross-attention maps, text self-attention T and cross-attention similarity C."""
    maps = spec_attention(dtype)
    return maps, text_attention_matrix(torch.tensor(RAW_TEXT, dtype=dtype)), cross_attention_similarity(maps, POSITIONS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_code_loss(dtype: torch.dtype) -> None:
    maps, t, c = spec_inputs(dtype)
    close(tsam_code_row_terms(t, c), [[0.0, 0.14595668, 0.28022335]])
    close(tsam_loss(maps, t, POSITIONS), [0.42618003])
    close(tsam_loss(maps, t, POSITIONS, smooth=False), [0.81354119])


@pytest.mark.parametrize("dtype", DTYPES)
def test_paper_loss(dtype: torch.dtype) -> None:
    maps, t, c = spec_inputs(dtype)
    close(tsam_paper_row_terms(t, c), [[0.45136158, 0.96906464, 1.47104078]])
    close(tsam_loss(maps, t, POSITIONS, loss_type="paper"), [2.89146701])


def test_objective_takes_raw_text_attention() -> None:
    maps = spec_attention(torch.float64)
    layout = TokenLayout(bindings=(), prompt_positions=tuple(POSITIONS))
    attn = {4: AttentionLevel(maps, 40)}
    raw = torch.tensor(RAW_TEXT, dtype=torch.float64)
    code = TSAMObjective().loss(attn, layout, 0, 50, text_self_attention=raw)
    assert code.total.dtype == torch.float32
    close(code.total, [0.42618003])
    paper = TSAMObjective(loss_type="paper").loss(attn, layout, 0, 50, text_self_attention=raw)
    close(paper.total, [2.89146701])
    big = torch.zeros(77, 77)
    big[:6, :6] = raw
    close(TSAMObjective().loss(attn, layout, 0, 50, text_self_attention=big).total, [0.42618003])
    with pytest.raises(ValueError, match="text_self_attention"):
        TSAMObjective().loss(attn, layout, 0, 50)


def _shifted(maps: torch.Tensor, raw: torch.Tensor, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's maps and T' moved to context columns ``start..`` of a ``size``-column context (zeros elsewhere)."""
    wide = torch.zeros(1, size, *maps.shape[-2:], dtype=maps.dtype)
    wide[:, start:start + maps.shape[1]] = maps
    text = torch.zeros(size, size, dtype=raw.dtype)
    text[start:start + raw.shape[0], start:start + raw.shape[1]] = raw
    return wide, text


@pytest.mark.parametrize("loss_type", ["code", "paper"])
def test_objective_reads_text_attention_at_the_maps_positions(loss_type: str) -> None:
    """T' is in context coordinates: a T5 segment after CLIP-L‖G's 77 columns (SD3) gives the spec's loss when both
    the maps and T' sit there; T5's forward attention (upper triangle) is never compared; prompt positions past
    the matrix (CLIP's second chunk) are left out, as T-SAM reads the first chunk only."""
    expected = {"code": [0.42618003], "paper": [2.89146701]}[loss_type]
    maps, raw = spec_attention(torch.float64), torch.tensor(RAW_TEXT, dtype=torch.float64)
    objective = TSAMObjective(loss_type=loss_type)
    wide, text = _shifted(maps, raw, 77, 120)
    layout = TokenLayout(bindings=(), prompt_positions=tuple(77 + p for p in POSITIONS), context_length=120,
                         clip_chunks=False)
    close(objective.loss({4: AttentionLevel(wide, 1)}, layout, 0, 50, text_self_attention=text).total, expected)
    bidirectional = text + torch.rand(120, 120, generator=torch.Generator().manual_seed(0)).triu(1)
    close(objective.loss({4: AttentionLevel(wide, 1)}, layout, 0, 50, text_self_attention=bidirectional).total,
          expected)
    wide, text = _shifted(maps, raw, 0, 154)
    two_chunks = TokenLayout(bindings=(), prompt_positions=(*POSITIONS, 78, 79, 80), context_length=154)
    result = objective.loss({4: AttentionLevel(wide, 1)}, two_chunks, 0, 50, text_self_attention=text[:77, :77])
    close(result.total, expected)
    assert result.terms["num_tokens"].item() == 4


def test_thresholds_are_the_references_float_products() -> None:
    # the reference computes 0.14 (n - 1) in double precision: 0.7000000000000001 for n = 6, not 0.70
    assert [tsam_threshold(n) for n in (5, 6, 7)] == [0.56, 0.7000000000000001, 0.8400000000000001]
    # outside n in {5, 6, 7} the reference raises KeyError; the same product applies
    assert tsam_threshold(4) == pytest.approx(0.42) and tsam_threshold(12) == pytest.approx(1.54)
    # a double loss at the reference's τ is not above it, so refinement runs on past 20 (a table's 0.70 would stop)
    refinement = TSAMObjective().refinement(0, 50)
    assert refinement is not None and refinement.continues(_result(0.7000000000000001, n=6), 20)
    assert not refinement.continues(_result(math.nextafter(0.7000000000000001, 1.0), n=6), 20)


def _result(loss: float, n: int = 4) -> LossResult:
    value = torch.tensor([loss], dtype=torch.float64)
    return LossResult(total=value, metric=value, terms={"num_tokens": torch.tensor(float(n))})


def test_faithful_refinement_stops_at_20_when_loss_is_high() -> None:
    refinement = TSAMObjective().refinement(0, 50)
    assert refinement is not None and refinement.max_iterations == 30
    high = _result(0.42618003)  # spec: above τ(4) = 0.42, so the faithful rule stops after 20 iterations
    done = 0
    while refinement.continues(high, done):
        done += 1
    assert done == 20
    low = TSAMObjective().refinement(10, 50)
    assert low is not None
    done = 0
    while low.continues(_result(0.1), done):
        done += 1
    assert done == 30


def test_fixed_refinement_stops_when_below_tau() -> None:
    objective = TSAMObjective(stop_rule="fixed")
    refinement = objective.refinement(20, 50)
    assert refinement is not None
    assert refinement.continues(_result(0.5), 0) and not refinement.lagged
    assert not refinement.continues(_result(0.41), 0)
    assert objective.refinement(5, 50) is None


def test_degenerate_prompts() -> None:
    maps = spec_attention(torch.float32).requires_grad_()
    layout = TokenLayout(bindings=(), prompt_positions=(1,))
    result = TSAMObjective().loss({4: AttentionLevel(maps, 1)}, layout, 0, 50)
    assert result.total.shape == (1,) and result.total.item() == 0.0
    with pytest.raises(ValueError, match="text self-attention"):
        tsam_loss(maps, torch.eye(3), POSITIONS)
