"""Spatial map processing: the reference Gaussian smoothing and nearest downsampling."""

from __future__ import annotations

import math

import torch
from torch.nn import functional

DEFAULT_KERNEL_SIZE = 3
DEFAULT_SIGMA = 0.5


def gaussian_taps(kernel_size: int = DEFAULT_KERNEL_SIZE, sigma: float = DEFAULT_SIGMA) -> list[float]:
    """1-D taps of the reference kernel: ``exp(-((x - mu) / (2 sigma))**2)``, normalised to sum 1.

    This is the form used by the A&E / D&B / T-SAM code (effective sigma = sigma * sqrt(2)),
    not the textbook ``exp(-(x - mu)**2 / (2 sigma**2))``. For 3 / 0.5 the taps are about
    ``[0.2119416, 0.5761169, 0.2119416]``.
    """
    mu = (kernel_size - 1) / 2.0
    raw = [math.exp(-(((x - mu) / (2.0 * sigma)) ** 2)) for x in range(kernel_size)]
    total = sum(raw)
    return [value / total for value in raw]


def gaussian_kernel(
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The reference 2-D kernel ``[kernel_size, kernel_size]``: outer product of the taps, renormalised."""
    taps = torch.tensor(gaussian_taps(kernel_size, sigma), dtype=torch.float64)
    kernel = torch.outer(taps, taps)
    kernel = kernel / kernel.sum()
    return kernel.to(dtype=dtype, device=device)


def gaussian_smooth(
    maps: torch.Tensor, kernel_size: int = DEFAULT_KERNEL_SIZE, sigma: float = DEFAULT_SIGMA
) -> torch.Tensor:
    """Smooth every 2-D map over the last two dims with the reference kernel and reflect padding.

    Works on ``[..., H, W]`` with any leading dims; output has the input's shape and dtype.
    Maps too small for reflect padding (a side shorter than ``kernel_size // 2 + 1``) use replicate padding.
    """
    if maps.dim() < 2:
        raise ValueError(f"gaussian_smooth expects [..., H, W], got shape {tuple(maps.shape)}")
    height, width = maps.shape[-2:]
    if maps.numel() == 0:
        return maps.clone()
    pad = kernel_size // 2
    flat = maps.reshape(-1, 1, height, width)
    mode = "reflect" if min(height, width) > pad else "replicate"
    padded = functional.pad(flat, (pad, pad, pad, pad), mode=mode)
    kernel = gaussian_kernel(kernel_size, sigma, dtype=maps.dtype, device=maps.device)
    out = functional.conv2d(padded, kernel.view(1, 1, kernel_size, kernel_size))
    return out.reshape(maps.shape)


def downsample_nearest(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[..., H, W]`` maps to ``size`` (PyTorch ``mode="nearest"``).

    Downsampling 64x64 to 16x16 picks source pixel ``(4r, 4c)``; 32x32 to 16x16 picks ``(2r, 2c)``,
    as the D&B reference does for its attribute maps.
    """
    target = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == target:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = functional.interpolate(flat, size=target, mode="nearest")
    return out.reshape(*lead, *target)
