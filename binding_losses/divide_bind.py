"""Divide & Bind loss (spec §5): attend via total variation, bind attribute maps via JSD."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..settings import Bounds, setting
from ._util import as_batched, zero_total
from .attend_excite import subject_maps
from .base import WEIGHT, LossResult, Refinement, fp32_maps, metric_below, select_main_level
from .distances import jsd
from .schedules import (
    DB_BIND_WEIGHTS,
    DB_MAX_THRESHOLDS,
    DB_REFINEMENT_CAPS,
    DB_TV_THRESHOLDS,
    divide_bind_refinement_caps,
    divide_bind_weight,
)
from .smoothing import downsample_nearest
from .subjects import MapOptions, SubjectObjective, attribute_words, subject_words
from .total_variation import TV_VARIANTS, total_variation
from .types import AttentionLevel, TokenLayout, Word

if TYPE_CHECKING:
    from typing_extensions import Unpack

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
    **options: Unpack[MapOptions],
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
    obj = subject_maps(maps, objects, **options)
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
            attr_map = subject_maps(source, [attribute], **options)[:, 0]
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


class DivideBindOptions(MapOptions, total=False):
    """The keyword options of :func:`divide_bind_breakdown`."""

    bind_weight: float
    mode: str
    tv_variant: str


def divide_bind_loss(
    maps: torch.Tensor,
    objects: Sequence[Word],
    attribute_maps: torch.Tensor | None = None,
    attributes: Sequence[Word | None] | None = None,
    **options: Unpack[DivideBindOptions],
) -> torch.Tensor:
    """D&B loss per batch item ``[B]``: ``-min_s v_s`` with ``v_s = TV(Â_s) - bind_weight * JSD_s`` (tv_bind).

    ``maps`` are the raw aggregated main-level maps ``[B, K, H, W]`` for the objects; ``attribute_maps`` the
    raw attribute-source maps at the same resolution (32/64 levels downsampled with
    :func:`~.smoothing.downsample_nearest`; ``None`` uses ``maps``). ``attributes[j]`` is object j's
    attribute word or ``None``. Both go through the A&E processing (token softmax, smoothing).
    ``bind_weight`` is λ_i (see :func:`~.schedules.divide_bind_weight`). Other ``mode``s: ``"tv"``,
    ``"max"`` (v = max attention), ``"tv_max"`` (v = TV + 0.3 max). ``tv_variant``: see
    :func:`~.total_variation.total_variation`. ``options`` are :func:`~.attend_excite.subject_maps`'s. Zeros
    when there are no objects.
    """
    return divide_bind_breakdown(maps, objects, attribute_maps, attributes, **options).total


DB_THRESHOLDS = Bounds(0.0, 1000.0)
"""D&B refinement thresholds: on total variation (the ``paper`` variant sums, so it can exceed 1) or on max
attention (``max`` mode)."""


@dataclass
class DivideBindObjective(SubjectObjective):
    """Divide & Bind (spec §5), ``tv_bind`` by default; refine while min TV is below the threshold.

    Attribute maps come from levels ``main/2`` and ``main/4`` (32x32 and 64x64 at a 16x16 main level),
    downsampled nearest to the main resolution and merged by map count; if neither level is present the main
    level is used. ``thresholds=None`` picks (0.05, 0.2, 0.3) for TV modes and (0.05, 0.5, 0.8) for ``max``.
    """

    name: ClassVar[str] = "divide_and_bind"
    loss_mode: str = setting(
        "tv_bind",
        "`tv_bind` = attendance (total variation) + binding; `tv` attendance only; `max`/`tv_max` use A&E's max "
        "instead",
        choices=DB_MODES,
    )
    tv_variant: str = setting("faithful", "total-variation formula (`faithful` = reference code)", choices=TV_VARIANTS)
    thresholds: tuple[float, float, float] | None = setting(
        None,
        "refinement thresholds at the three refinement points; none: (0.05, 0.2, 0.3), or (0.05, 0.5, 0.8) with "
        "`loss_mode = max`",
        bounds=DB_THRESHOLDS,
    )
    refinement_caps: str = setting(
        "paper",
        "iteration caps at the refinement points: paper (50, 20, 20), in `max` mode (20, 20, 20); latest "
        "(100, 50, 50)",
        choices=tuple(DB_REFINEMENT_CAPS),
    )
    bind_weights: tuple[float, float, float] = setting(
        DB_BIND_WEIGHTS, "binding-term weight λ in the three stages (i < 0.2 N, < 0.4 N, later)", bounds=WEIGHT
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.thresholds is None:
            self.thresholds = DB_MAX_THRESHOLDS if self.loss_mode == "max" else DB_TV_THRESHOLDS

    def requirement_error(self, layout: TokenLayout) -> str | None:
        """tv_bind's binding term needs an attribute (a modifier) on at least one subject."""
        if self.loss_mode == "tv_bind" and not any(word is not None for word in attribute_words(layout)):
            return ("divide_and_bind with loss_mode 'tv_bind' needs a modifier on at least one noun, and the "
                    "bindings have none. Add attributes to the prompt, or set 'loss_mode = tv' in advanced "
                    "(attendance only).")
        return None

    def levels(self, main_factor: int) -> set[int]:
        """The main level, plus ``main/2`` and ``main/4`` (when >= 1) for ``tv_bind``'s attribute maps."""
        out = {main_factor}
        if self.loss_mode == "tv_bind":
            out |= {f for f in (main_factor // 2, main_factor // 4) if f >= 1}
        return out

    def _attribute_source(
        self, attn: Mapping[int, AttentionLevel], main: int, size: tuple[int, int]
    ) -> torch.Tensor | None:
        """Attribute maps: levels ``main/2`` and ``main/4`` downsampled to ``size``, merged by map count."""
        total: torch.Tensor | None = None
        count = 0
        for factor in sorted({main // 2, main // 4}):
            if factor < 1 or factor == main or factor not in attn:
                continue
            level = attn[factor]
            weight = max(int(level.count), 1)
            maps = downsample_nearest(fp32_maps(level), size) * weight
            total = maps if total is None else total + maps
            count += weight
        return None if total is None else total / count

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
        """D&B loss; ``metric`` is the refinement indicator (min TV, or min max-attention in ``max`` mode)."""
        maps = fp32_maps(select_main_level(attn))
        attributes = attribute_words(layout)
        source = None
        if self.loss_mode == "tv_bind" and any(attributes):
            source = self._attribute_source(attn, max(attn), (maps.shape[-2], maps.shape[-1]))
        weight = divide_bind_weight(step, num_steps, self.bind_weights)
        out = divide_bind_breakdown(
            maps,
            subject_words(layout),
            source,
            attributes,
            bind_weight=weight,
            mode=self.loss_mode,
            tv_variant=self.tv_variant,
            **self.map_options(layout, maps.shape[1]),
        )
        terms = {
            "tv": out.tv.detach(),
            "maxima": out.maxima.detach(),
            "bind_jsd": out.bind_jsd.detach(),
            "bind_weight": torch.tensor(weight),
        }
        return LossResult(total=out.total, metric=out.indicator, terms=terms)

    def refinement_at(self, phase: int) -> Refinement:
        """Continue while the indicator is below the threshold, up to the cap (``stop_rule`` faithful: judged one
        update late, as the reference)."""
        assert self.thresholds is not None
        cap = divide_bind_refinement_caps(self.refinement_caps, self.loss_mode)[phase]
        return Refinement(cap, metric_below(self.thresholds[phase]), lagged=self.stop_rule == "faithful")
