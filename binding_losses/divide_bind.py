"""Divide & Bind loss (spec §5): attend via total variation, bind attribute maps via JSD."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._util import as_batched, zero_total
from .attend_excite import subject_maps
from .distances import jsd
from .smoothing import DEFAULT_KERNEL_SIZE, DEFAULT_SIGMA
from .token_maps import CHUNK_SIZE, ColumnRange
from .total_variation import total_variation
from .types import Word

DB_MODES = ("tv_bind", "tv", "max", "tv_max")
BIND_FLOOR = 1e-5


@dataclass(frozen=True)
class DivideBindBreakdown:
    """D&B loss pieces. ``total`` ``[B]``; per object ``[B, S]``: ``tv``, ``maxima``, ``bind_jsd`` (unweighted
    JSD, 0 without an attribute) and ``value`` v_s; ``indicator`` ``[B]`` is the refinement metric
    (min TV, or min max-attention in ``max`` mode)."""

    total: torch.Tensor
    tv: torch.Tensor
    maxima: torch.Tensor
    bind_jsd: torch.Tensor
    value: torch.Tensor
    indicator: torch.Tensor


def binding_jsd(object_map: torch.Tensor, attribute_map: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
    """The reference binding term for ``[B, H, W]`` processed maps (spec §5.2 step 2); returns ``[B]``.

    Rescale the attribute map to the object map's max, softmax both over pixels, threshold both at
    ``q * max(p)`` (q = 0.3 if TV < 0.1 else 0.2), floor at 1e-5 without renormalising, then JSD.
    """
    flat_obj = object_map.flatten(-2)
    flat_attr = attribute_map.flatten(-2)
    obj_max = flat_obj.amax(dim=-1, keepdim=True)
    attr_max = flat_attr.amax(dim=-1, keepdim=True)
    rescaled = flat_attr / attr_max * obj_max
    p = torch.softmax(flat_obj, dim=-1)
    q = torch.softmax(rescaled, dim=-1)
    fraction = torch.where(tv.detach() < 0.1, 0.3, 0.2).to(p.dtype).unsqueeze(-1)
    theta = fraction * p.amax(dim=-1, keepdim=True)
    p_thr = torch.relu(p - theta) + BIND_FLOOR
    q_thr = torch.relu(q - theta) + BIND_FLOOR
    return jsd(p_thr, q_thr, dims=(-1,))


def divide_bind_breakdown(
    maps: torch.Tensor,
    objects: Sequence[Word],
    attribute_maps: torch.Tensor | None = None,
    attributes: Sequence[Word | None] | None = None,
    *,
    bind_weight: float = 1.0,
    mode: str = "tv_bind",
    tv_variant: str = "faithful",
    smooth: bool = True,
    scale: float = 100.0,
    keep: ColumnRange | Sequence[ColumnRange] | None = None,
    chunk_size: int = CHUNK_SIZE,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> DivideBindBreakdown:
    """D&B with every piece exposed. See :func:`divide_bind_loss` for the arguments."""
    if mode not in DB_MODES:
        raise ValueError(f"mode must be one of {DB_MODES}, got {mode!r}")
    maps = as_batched(maps)
    batch = maps.shape[0]
    if not objects:
        zero = zero_total(maps)
        empty = maps.new_zeros(batch, 0)
        return DivideBindBreakdown(zero, empty, empty, empty, empty, zero.detach())
    options = {"smooth": smooth, "scale": scale, "keep": keep, "chunk_size": chunk_size}
    options.update(kernel_size=kernel_size, sigma=sigma)
    obj = subject_maps(maps, objects, **options)  # type: ignore[arg-type]
    tv = total_variation(obj, tv_variant)  # [B, S]
    maxima = obj.flatten(-2).amax(dim=-1)
    bind = torch.zeros_like(tv)
    attrs = list(attributes) if attributes is not None else []
    if mode == "tv_bind" and any(attrs):
        source = as_batched(attribute_maps) if attribute_maps is not None else maps
        if source.dtype != maps.dtype:
            source = source.to(maps.dtype)
        columns = []
        for j in range(len(objects)):
            attribute = attrs[j] if j < len(attrs) else None
            if not attribute:
                columns.append(torch.zeros_like(tv[:, j]))
                continue
            attr_map = subject_maps(source, [attribute], **options)[:, 0]  # type: ignore[arg-type]
            columns.append(binding_jsd(obj[:, j], attr_map, tv[:, j]))
        bind = torch.stack(columns, dim=1)
    if mode == "max":
        value = maxima
    elif mode == "tv_max":
        value = tv + 0.3 * maxima
    else:
        value = tv - bind_weight * bind
    total = -value.amin(dim=-1)
    indicator = (maxima if mode == "max" else tv).amin(dim=-1).detach()
    return DivideBindBreakdown(total, tv, maxima, bind, value, indicator)


def divide_bind_loss(
    maps: torch.Tensor,
    objects: Sequence[Word],
    attribute_maps: torch.Tensor | None = None,
    attributes: Sequence[Word | None] | None = None,
    *,
    bind_weight: float = 1.0,
    mode: str = "tv_bind",
    tv_variant: str = "faithful",
    smooth: bool = True,
    scale: float = 100.0,
    keep: ColumnRange | Sequence[ColumnRange] | None = None,
    chunk_size: int = CHUNK_SIZE,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> torch.Tensor:
    """D&B loss per batch item ``[B]``: ``-min_s v_s`` with ``v_s = TV(Â_s) - bind_weight * JSD_s`` (tv_bind).

    ``maps`` are the raw aggregated main-level maps ``[B, K, H, W]`` for the objects; ``attribute_maps`` the
    raw attribute-source maps at the same resolution (32/64 levels downsampled with
    :func:`~.smoothing.downsample_nearest`; ``None`` uses ``maps``). ``attributes[j]`` is object j's
    attribute word or ``None``. Both go through the A&E processing (token softmax, smoothing).
    ``bind_weight`` is λ_i (see :func:`~.schedules.divide_bind_weight`). Other ``mode``s: ``"tv"``,
    ``"max"`` (v = max attention), ``"tv_max"`` (v = TV + 0.3 max). ``tv_variant``: see
    :func:`~.total_variation.total_variation`. Zeros when there are no objects.
    """
    return divide_bind_breakdown(
        maps,
        objects,
        attribute_maps,
        attributes,
        bind_weight=bind_weight,
        mode=mode,
        tv_variant=tv_variant,
        smooth=smooth,
        scale=scale,
        keep=keep,
        chunk_size=chunk_size,
        kernel_size=kernel_size,
        sigma=sigma,
    ).total
