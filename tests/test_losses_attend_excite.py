"""Spec §9.3: Attend-and-Excite processing, maxima, loss and refinement decisions."""

from __future__ import annotations

import pytest
import torch
from binding_guidance.binding_losses import (
    AttendExciteObjective,
    AttentionLevel,
    LossResult,
    TokenBinding,
    TokenLayout,
    attend_excite_loss,
    attend_excite_maxima,
    gaussian_smooth,
    subject_maps,
    token_softmax,
)
from binding_guidance.binding_losses.token_maps import chunk_ranges

TOL = 1e-6
DTYPES = [torch.float64, torch.float32]


def spec_attention(dtype: torch.dtype) -> torch.Tensor:
    """A[r, c, :] = softmax_k(2 sin(r + 2c + 3k)), k = 0..5, returned token-major [1, 6, 4, 4]."""
    r = torch.arange(4, dtype=torch.float64).view(4, 1, 1)
    c = torch.arange(4, dtype=torch.float64).view(1, 4, 1)
    k = torch.arange(6, dtype=torch.float64).view(1, 1, 6)
    hwk = torch.softmax(2 * torch.sin(r + 2 * c + 3 * k), dim=-1)
    return hwk.permute(2, 0, 1).unsqueeze(0).to(dtype)


def close(actual: torch.Tensor, expected: object, tol: float = TOL) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    actual_t = actual.detach().to(torch.float64).reshape(expected_t.shape)
    assert torch.allclose(actual_t, expected_t, atol=tol, rtol=0), (actual_t, expected_t)


TOKEN_SOFTMAXED_2 = [
    [0.0, 0.478552, 0.0, 0.0],
    [0.999986, 0.0, 0.0, 0.999971],
    [0.478552, 0.0, 0.0, 0.992828],
    [0.0, 0.0, 0.999971, 1e-06],
]
SMOOTHED_2 = [
    [0.361068, 0.248674, 0.148268, 0.244199],
    [0.433331, 0.202030, 0.188193, 0.453128],
    [0.280938, 0.148269, 0.288245, 0.541466],
    [0.116865, 0.165092, 0.421095, 0.486654],
]


def test_input_row_matches_spec() -> None:
    close(spec_attention(torch.float64)[0, :, 0, 0], [0.108797, 0.144275, 0.062218, 0.248072, 0.037201, 0.399437])


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_softmax_and_smoothing(dtype: torch.dtype) -> None:
    tol = TOL
    probs = token_softmax(spec_attention(dtype))
    close(probs[0, 2], TOKEN_SOFTMAXED_2, tol)
    assert torch.all(probs[0, 0] == 0) and torch.all(probs[0, 5] == 0)
    close(probs[0, 1:5].sum(dim=0), torch.ones(4, 4), 1e-6)
    close(gaussian_smooth(probs[0, 2]), SMOOTHED_2, tol)
    close(subject_maps(spec_attention(dtype), [(2,)])[0, 0], SMOOTHED_2, tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxima_and_loss(dtype: torch.dtype) -> None:
    tol = TOL
    maps = spec_attention(dtype)
    close(attend_excite_maxima(maps, [(2,), (4,)]), [[0.54146580, 0.45925153]], tol)
    close(attend_excite_loss(maps, [(2,), (4,)]), [0.54074847], tol)
    close(attend_excite_maxima(maps, [(2,), (4,)], smooth=False), [[0.99998627, 0.99999993]], tol)
    close(attend_excite_loss(maps, [(2,), (4,)], smooth=False), [0.00001373], tol)


def test_refinement_decisions_with_spec_loss() -> None:
    objective = AttendExciteObjective()
    loss = torch.tensor([0.54074847])
    result = LossResult(total=loss, metric=loss)
    decisions = {}
    for step in (0, 10, 20):
        refinement = objective.refinement(step, 50)
        assert refinement is not None and refinement.max_iterations == 20
        decisions[step] = refinement.continues(result, 0)
    assert decisions == {0: False, 10: True, 20: True}
    assert objective.refinement(5, 50) is None
    assert objective.refinement(30, 50) is None


def test_objective_reproduces_spec_loss() -> None:
    maps = spec_attention(torch.float64)
    layout = TokenLayout(bindings=(TokenBinding((2,)), TokenBinding((4,))), prompt_positions=(1, 2, 3, 4))
    # keep=None drops the first and last column of the (single, 6-wide) chunk, like the spec
    result = AttendExciteObjective().loss({4: AttentionLevel(maps, 40)}, layout, 0, 50)
    assert result.total.dtype == torch.float32
    close(result.total, [0.54074847], TOL)
    close(result.terms["maxima"], [[0.54146580, 0.45925153]], TOL)
    explicit = TokenLayout(bindings=(), prompt_positions=(1, 2, 3, 4), subjects=((4,),))
    close(AttendExciteObjective().loss({4: AttentionLevel(maps, 40)}, explicit, 0, 50).total, [1 - 0.45925153], TOL)


def test_chunked_softmax_for_two_chunks() -> None:
    assert chunk_ranges(77) == [(1, 76)]
    assert chunk_ranges(154) == [(1, 76), (78, 153)]
    assert chunk_ranges(154, keep=(1, 5)) == [(1, 5), (78, 82)]
    assert chunk_ranges(154, keep=[(1, 9), (1, 4)]) == [(1, 9), (78, 81)]
    maps = torch.rand(2, 154, 4, 4, dtype=torch.float64)
    probs = token_softmax(maps)
    close(probs[:, 1:76].sum(dim=1), torch.ones(2, 4, 4), 1e-12)
    close(probs[:, 78:153].sum(dim=1), torch.ones(2, 4, 4), 1e-12)
    for column in (0, 76, 77, 153):
        assert torch.all(probs[:, column] == 0)
    # the second chunk is processed exactly like a standalone chunk
    close(probs[:, 77:154], token_softmax(maps[:, 77:154]), 1e-12)


def test_multi_piece_subject_is_pixelwise_max() -> None:
    maps = spec_attention(torch.float64)
    combined = subject_maps(maps, [(2, 3)])[0, 0]
    pieces = subject_maps(maps, [(2,), (3,)])[0]
    close(combined, pieces.amax(dim=0), 1e-12)


def test_no_subjects_gives_zeros_with_grad() -> None:
    maps = spec_attention(torch.float32).repeat(3, 1, 1, 1).requires_grad_()
    zero = attend_excite_loss(maps, [])
    assert zero.shape == (3,) and torch.all(zero == 0)
    zero.sum().backward()
    empty = TokenLayout(bindings=(), prompt_positions=(1, 2))
    result = AttendExciteObjective().loss({4: AttentionLevel(maps.detach(), 1)}, empty, 0, 50)
    assert result.total.shape == (3,) and torch.all(result.total == 0)
