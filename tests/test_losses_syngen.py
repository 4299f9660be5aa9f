"""Spec §9.2: SynGen totals and per-pair terms for examples (a)-(c), and the entropy-variant table."""

from __future__ import annotations

import pytest
import torch
from binding_guidance.binding_losses import (
    TokenBinding,
    entropy,
    symmetric_kl,
    syngen_breakdown,
    syngen_entropy_loss,
    syngen_loss,
)

TOL = 1e-6
DTYPES = [torch.float64, torch.float32]


def tokmap(k: int, dtype: torch.dtype) -> torch.Tensor:
    """Spec toy map of CLIP position k: 1 + ((k r + 2 c + k) mod 7)."""
    return torch.tensor([[1 + ((k * r + 2 * c + k) % 7) for c in range(4)] for r in range(4)], dtype=dtype)


def toy_maps(dtype: torch.dtype, num_tokens: int = 12) -> torch.Tensor:
    return torch.stack([tokmap(k, dtype) for k in range(num_tokens)]).unsqueeze(0)  # [1, K, 4, 4]


def close(actual: torch.Tensor | float, expected: float, tol: float = TOL) -> None:
    value = torch.as_tensor(actual, dtype=torch.float64).reshape(-1)
    assert value.numel() == 1, value
    assert abs(value.item() - expected) <= tol, (value.item(), expected)


EXAMPLE_A = ((TokenBinding((3,), ((2,),)), TokenBinding((7,), ((6,),))), tuple(range(1, 8)))
EXAMPLE_B = ((TokenBinding((4,), ((2, 3),)), TokenBinding((9,), ((7,), (8,)))), tuple(range(1, 10)))
EXAMPLE_C = ((TokenBinding((2,)), TokenBinding((6,), ((5,),))), tuple(range(1, 7)))


def test_tokmap_examples() -> None:
    assert tokmap(2, torch.float64).tolist() == [[3, 5, 7, 2], [5, 7, 2, 4], [7, 2, 4, 6], [2, 4, 6, 1]]
    assert tokmap(7, torch.float64).tolist() == [[1, 3, 5, 7]] * 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_example_a(dtype: torch.dtype) -> None:
    out = syngen_breakdown(toy_maps(dtype), *EXAMPLE_A)
    (p1, p2) = out.pairs
    assert (p1.modifier, p1.noun, p2.modifier, p2.noun) == ((2,), (3,), (6,), (7,))
    close(p1.positive, 0.38528681)
    close(p1.negative, -0.32615134)
    close(p2.positive, 0.42681329)
    close(p2.negative, -0.36316345)
    close(out.positive, 0.81210009)
    close(out.negative, -0.68931479)
    close(out.total, 0.12278530)
    close(syngen_loss(toy_maps(dtype), *EXAMPLE_A), 0.12278530)


@pytest.mark.parametrize("dtype", DTYPES)
def test_example_b_multi_piece_word(dtype: torch.dtype) -> None:
    out = syngen_breakdown(toy_maps(dtype), *EXAMPLE_B)
    expected = [(0.37486742, -0.36176700), (0.37844249, -0.33797838), (0.27767548, -0.27203913)]
    assert [p.modifier for p in out.pairs] == [(2, 3), (7,), (8,)]
    for pair, (pos, neg) in zip(out.pairs, expected, strict=True):
        close(pair.positive, pos)
        close(pair.negative, neg)
    close(out.total, 0.05920088)


@pytest.mark.parametrize("dtype", DTYPES)
def test_example_c_entity_only_set(dtype: torch.dtype) -> None:
    out = syngen_breakdown(toy_maps(dtype), *EXAMPLE_C)
    entity, pair = out.pairs
    assert entity.modifier is None
    close(entity.positive, 0.0)
    close(entity.negative, -0.32034438)
    close(pair.positive, 0.30971562)
    close(pair.negative, -0.34690138)
    close(out.total, -0.35753014)


def test_entropies_of_toy_maps() -> None:
    expected = [2.63964529, 2.65340676, 2.64609118, 2.63954209, 2.62447087, 2.65043374, 2.59860824]
    values = entropy(toy_maps(torch.float64)[0, 1:8])
    assert torch.allclose(values, torch.tensor(expected, dtype=torch.float64), atol=TOL, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lam", "gamma", "mode", "l_pos", "l_neg", "total"),
    [
        (0.0, 0.0, "as_written", 0.81210009, -0.68931479, 0.12278530),
        (0.0, 0.0, "prose_intent", 0.81210009, -0.68931479, 0.12278530),
        (0.1, 0.1, "as_written", 1.86695409, -0.42575623, 1.44119786),
        (0.1, 0.1, "prose_intent", 1.86695409, -0.95287336, 0.91408073),
        (1.0, 1.0, "as_written", 11.36064001, 1.94627085, 13.30691086),
        (1.0, 1.0, "prose_intent", 11.36064001, -3.32490043, 8.03573958),
    ],
)
def test_entropy_variant_table(
    dtype: torch.dtype, lam: float, gamma: float, mode: str, l_pos: float, l_neg: float, total: float
) -> None:
    tol = TOL
    out = syngen_breakdown(toy_maps(dtype), *EXAMPLE_A, lambda_entropy=lam, gamma_entropy=gamma, entropy_neg_mode=mode)
    close(out.positive, l_pos, tol)
    close(out.negative, l_neg, tol)
    close(out.total, total, tol)
    close(syngen_entropy_loss(toy_maps(dtype), *EXAMPLE_A, lam, gamma, mode), total, tol)


def test_entropy_variant_at_zero_equals_syngen_everywhere() -> None:
    maps = torch.rand(3, 12, 8, 8, dtype=torch.float64) + 0.01
    for bindings, positions in (EXAMPLE_A, EXAMPLE_B, EXAMPLE_C):
        plain = syngen_loss(maps, bindings, positions)
        variant = syngen_entropy_loss(maps, bindings, positions, 0.0, 0.0)
        assert torch.equal(plain, variant)


def test_entity_only_gamma_term_sign() -> None:
    """Negative-only sets get ``-(1/|U|) sum_u (d(n,u) - sign*gamma*H_u)`` (spec §3.2.6)."""
    maps = toy_maps(torch.float64)
    bindings, positions = (TokenBinding((2,)),), tuple(range(1, 7))
    base = syngen_loss(maps, bindings, positions)
    mean_h = entropy(maps[0, [1, 3, 4, 5, 6]]).mean()
    written = syngen_entropy_loss(maps, bindings, positions, 0.0, 0.1, "as_written")
    prose = syngen_entropy_loss(maps, bindings, positions, 0.0, 0.1, "prose_intent")
    close(written - base, (0.1 * mean_h).item(), 1e-12)
    close(prose - base, (-0.1 * mean_h).item(), 1e-12)


def test_batch_items_are_independent() -> None:
    a = toy_maps(torch.float64)
    b = torch.rand_like(a) + 0.1
    batched = syngen_loss(torch.cat([a, b]), *EXAMPLE_A)
    assert batched.shape == (2,)
    close(batched[0], 0.12278530)
    close(batched[1], syngen_loss(b, *EXAMPLE_A).item(), 1e-12)
    # [K, H, W] input is a batch of one
    assert syngen_loss(a[0], *EXAMPLE_A).shape == (1,)


def test_max_over_pieces_is_worst_case() -> None:
    maps = toy_maps(torch.float64)
    bindings, positions = EXAMPLE_B
    first = syngen_breakdown(maps, bindings, positions).pairs[0]
    close(first.positive, max(symmetric_kl(maps[0, 2], maps[0, 4]).item(), symmetric_kl(maps[0, 3], maps[0, 4]).item()))


def test_empty_and_degenerate_inputs() -> None:
    maps = toy_maps(torch.float32).requires_grad_()
    zero = syngen_loss(maps, (), tuple(range(1, 8)))
    assert zero.shape == (1,) and zero.item() == 0.0
    zero.sum().backward()  # must not raise
    assert maps.grad is not None and maps.grad.abs().sum().item() == 0.0
    # every prompt token inside the binding: U is empty, negative term is 0
    out = syngen_breakdown(toy_maps(torch.float64), (TokenBinding((3,), ((2,),)),), (2, 3))
    close(out.negative, 0.0)
    close(out.total, out.positive.item())
    with pytest.raises(ValueError, match="outside"):
        syngen_loss(toy_maps(torch.float64), (TokenBinding((30,), ((2,),)),), (2, 30))
    with pytest.raises(ValueError, match="entropy_neg_mode"):
        syngen_entropy_loss(toy_maps(torch.float64), *EXAMPLE_A, entropy_neg_mode="nope")
