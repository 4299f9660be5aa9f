"""Spec §9.1 smoothing, §9.2 distances, §9.4 TV and JSD vectors, plus the map helpers."""

from __future__ import annotations

import math

import pytest
import torch
from binding_guidance.binding_losses import (
    downsample_nearest,
    entropy,
    gaussian_kernel,
    gaussian_smooth,
    gaussian_taps,
    jsd,
    pairwise_symmetric_kl,
    symmetric_kl,
    total_variation,
)

TOL = 1e-6
DTYPES = [torch.float64, torch.float32]


def base_maps(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    m1 = torch.arange(1, 17, dtype=torch.float64).reshape(4, 4)
    m4 = torch.tensor(
        [[0.1, 0.1, 0.1, 0.1], [0.1, 4.1, 2.1, 0.1], [0.1, 2.1, 1.1, 0.1], [0.1, 0.1, 0.1, 0.1]], dtype=torch.float64
    )
    out = {"M1": m1, "M2": m1.T.contiguous(), "M3": torch.ones(4, 4, dtype=torch.float64), "M4": m4}
    return {key: value.to(dtype) for key, value in out.items()}


def close(actual: torch.Tensor | float, expected: object, tol: float = TOL) -> None:
    actual_t = torch.as_tensor(actual, dtype=torch.float64)
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert actual_t.shape == expected_t.shape, (actual_t.shape, expected_t.shape)
    assert torch.allclose(actual_t, expected_t, atol=tol, rtol=0), (actual_t, expected_t)


# --- §9.1 / §1.4 Gaussian smoothing -----------------------------------------------------------------


def test_kernel_taps_are_the_reference_quirk_form() -> None:
    close(gaussian_taps(3, 0.5), [0.2119416, 0.5761169, 0.2119416], 1e-7)
    kernel = gaussian_kernel(3, 0.5, dtype=torch.float64)
    corner, edge, center = 0.04491922, 0.12210311, 0.33191066
    close(kernel, [[corner, edge, corner], [edge, center, edge], [corner, edge, corner]], 1e-8)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_smooth_m1_and_m4(dtype: torch.dtype) -> None:
    maps = base_maps(dtype)
    close(
        gaussian_smooth(maps["M1"]),
        [
            [3.11941558, 3.69553246, 4.69553246, 5.27164935],
            [5.42388312, 6, 7, 7.57611688],
            [9.42388312, 10, 11, 11.57611688],
            [11.72835065, 12.30446754, 13.30446754, 13.88058442],
        ],
        # M1's smoothed values reach 13.9, where one fp32 ulp is 9.5e-7: allow 2 ulps in fp32.
        TOL if dtype == torch.float64 else 2e-6,
    )
    close(
        gaussian_smooth(maps["M4"]),
        [
            [0.81870758, 1.25650177, 0.94776623, 0.45935379],
            [1.25650177, 1.96097432, 1.46417533, 0.67825089],
            [0.94776623, 1.46417533, 1.1, 0.52388312],
            [0.45935379, 0.67825089, 0.52388312, 0.2796769],
        ],
    )


def test_smooth_is_not_the_textbook_kernel() -> None:
    row0 = gaussian_smooth(base_maps(torch.float64)["M1"])[0]
    textbook = torch.tensor([2.06506979, 2.85205583, 3.85205583, 4.63904187], dtype=torch.float64)
    assert (row0 - textbook).abs().min() > 0.5


def test_smooth_keeps_leading_dims_and_dtype() -> None:
    maps = base_maps(torch.float32)
    batch = torch.stack([maps["M1"], maps["M4"]]).unsqueeze(0).repeat(3, 1, 1, 1)  # [3, 2, 4, 4]
    out = gaussian_smooth(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    close(out[2, 1], gaussian_smooth(maps["M4"]))


def test_smooth_tiny_maps_do_not_crash() -> None:
    assert gaussian_smooth(torch.ones(2, 1, 1)).shape == (2, 1, 1)
    close(gaussian_smooth(torch.ones(1, 5)), torch.ones(1, 5))


def test_downsample_nearest_picks_strided_pixels() -> None:
    big = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    small = downsample_nearest(big, 16)
    assert small.shape == (1, 1, 16, 16)
    assert torch.equal(small[0, 0], big[0, 0, ::4, ::4])
    mid = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    assert torch.equal(downsample_nearest(mid, (16, 16)), mid[::2, ::2])
    assert downsample_nearest(mid, 32) is mid


# --- §9.2 symmetric KL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetric_kl_vectors(dtype: torch.dtype) -> None:
    m = base_maps(dtype)
    close(symmetric_kl(m["M1"], m["M2"]), 0.18415876)
    close(symmetric_kl(100 * m["M1"], m["M2"]), 0.18415876)
    close(symmetric_kl(m["M1"], m["M3"]), 0.19426862)
    close(symmetric_kl(m["M1"], m["M4"]), 1.23270477)
    close(symmetric_kl(m["M4"], m["M3"]), 1.06450402)
    close(symmetric_kl(m["M2"], m["M1"]), 0.18415876)


def test_symmetric_kl_exact_zeros() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64)
    assert math.isinf(symmetric_kl(p, q, infinite_on_zero=True).item())
    # KL(P||Q) = ln 2 is the finite half of the reference's infinite value.
    finite = symmetric_kl(p, q)
    assert math.isfinite(finite.item())
    # KL(Q||P) with P's zero clamped to eps: 2 * 0.25 * ln(0.25 / 0.5) + 0.5 * ln(0.5 / eps).
    kl_qp_clamped = -0.5 * math.log(2.0) + 0.5 * math.log(0.5 / torch.finfo(torch.float64).eps)
    close(finite, 0.5 * (math.log(2.0) + kl_qp_clamped))


def test_pairwise_matches_elementwise() -> None:
    m = base_maps(torch.float64)
    stack = torch.stack([m["M1"], m["M2"], m["M3"], m["M4"]])
    table = pairwise_symmetric_kl(stack)
    for i in range(4):
        for j in range(4):
            close(table[i, j], symmetric_kl(stack[i], stack[j]), 1e-12)


def test_entropy_of_uniform_map() -> None:
    close(entropy(torch.ones(16, 16, dtype=torch.float64)), math.log(256.0), 1e-9)


# --- §9.4 TV and JSD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "scale", "faithful", "fixed", "paper"),
    [("M1", 1.0, 5.0, 5.0, 60.0), ("M4", 1.0, 1.75, 2.0, 24.0), ("M1", 1 / 16, 0.3125, 0.3125, 3.75)],
)
def test_total_variation_table(
    dtype: torch.dtype, name: str, scale: float, faithful: float, fixed: float, paper: float
) -> None:
    x = base_maps(dtype)[name] * scale
    close(total_variation(x), faithful)
    close(total_variation(x, "faithful"), faithful)
    close(total_variation(x, variant="fixed"), fixed)
    close(total_variation(x, variant="paper"), paper)


def test_total_variation_batched_and_errors() -> None:
    m = base_maps(torch.float64)
    out = total_variation(torch.stack([m["M1"], m["M4"]]).unsqueeze(0))
    close(out, [[5.0, 1.75]])
    with pytest.raises(ValueError, match="variant"):
        total_variation(m["M1"], "nope")
    close(total_variation(torch.ones(1, 5)), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jsd_vectors(dtype: torch.dtype) -> None:
    m = base_maps(dtype)
    close(jsd(m["M1"] / m["M1"].sum(), m["M2"] / m["M2"].sum()), 0.04414727)
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=dtype)
    q = torch.full((4,), 0.25, dtype=dtype)
    close(jsd(p, q, dims=(-1,)), 0.21576155)
    close(jsd(p.reshape(2, 2), q.reshape(2, 2)), 0.21576155)
