"""One ``Objective`` per method (spec defaults), ``ObjectiveChain`` and the method registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .attend_excite import attend_excite_maxima
from .base import LossResult, Objective, Refinement, fp32_maps, metric_above, metric_below, select_main_level
from .divide_bind import DB_MODES, divide_bind_breakdown
from .schedules import (
    AE_THRESHOLDS,
    DB_BIND_WEIGHTS,
    DB_MAX_THRESHOLDS,
    DB_REFINEMENT_CAPS,
    DB_TV_THRESHOLDS,
    decaying_step_size,
    divide_bind_refinement_caps,
    divide_bind_weight,
    is_guided,
    refinement_phase,
    tsam_threshold,
)
from .smoothing import downsample_nearest
from .syngen import ENTROPY_NEG_MODES, syngen_breakdown
from .token_maps import CHUNK_SIZE, ColumnRange
from .total_variation import TV_VARIANTS
from .tsam import (
    TSAM_LOSS_TYPES,
    cross_attention_similarity,
    text_attention_matrix,
    tsam_code_row_terms,
    tsam_paper_row_terms,
)
from .types import AttentionLevel, TokenLayout, Word


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Convert a parameter to its annotated type (numbers from strings, ``"a, b, c"`` to a float triple)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return None
    try:
        if base == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if base.startswith("tuple[float"):
            items = value.replace("(", "").replace(")", "").split(",") if isinstance(value, str) else list(value)
            out = tuple(float(item) for item in items)
            if len(out) != 3:
                raise TypeError
            return out
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} must be {base}{' or None' if optional else ''}, got {value!r}") from None
    return value


class _Validated:
    """Mixin: coerce every dataclass field to its annotated type after ``__init__``."""

    def _coerce_fields(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, item.name, _coerce(item.name, str(item.type), getattr(self, item.name)))

    def __post_init__(self) -> None:
        self._coerce_fields()
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Reject values no schedule can use, naming the parameter and the fix."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}  # type: ignore[arg-type]
        scale, fraction = values.get("scale_factor"), values.get("guided_fraction")
        if scale is not None and scale < 0:
            raise ValueError(f"step size (scale_factor) must be ≥ 0, got {scale}")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"guided_fraction must be between 0 and 1, got {fraction}")
        for cap in ("max_refinement_steps", "refinement_iterations"):
            if cap in values and values[cap] < 1:
                raise ValueError(f"{cap} must be ≥ 1, got {values[cap]}; use 'refine = false' to switch refinement off")


@dataclass
class SynGenObjective(_Validated, Objective):
    """SynGen (spec §2): constant step 20 at loop indices i < round(0.5 N), no refinement."""

    name: ClassVar[str] = "syngen"
    scale_factor: float = 20.0
    guided_fraction: float = 0.5
    main_factor: int | None = None
    include_entities: bool = False
    """Reference default False: entities without modifiers get no set. True gives them the negative-only term."""

    def _breakdown_kwargs(self) -> dict[str, Any]:
        return {}

    def _bindings(self, layout: TokenLayout) -> tuple:
        if self.include_entities:
            return tuple(layout.bindings)
        return tuple(binding for binding in layout.bindings if binding.modifiers)

    def active(self, layout: TokenLayout) -> bool:
        """SynGen guides only when some entity has a modifier (or every entity, with ``include_entities``)."""
        return bool(self._bindings(layout))

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
        """SynGen loss on the main level's raw maps."""
        maps = fp32_maps(select_main_level(attn, self.main_factor))
        out = syngen_breakdown(maps, self._bindings(layout), layout.prompt_positions, **self._breakdown_kwargs())
        terms = {"positive": out.positive.detach(), "negative": out.negative.detach()}
        return LossResult(total=out.total, metric=out.total.detach(), terms=terms)

    def step_size(self, step: int, num_steps: int) -> float:
        """Constant ``scale_factor`` (SynGen's step size never decays)."""
        return float(self.scale_factor)

    def guides(self, step: int, num_steps: int) -> bool:
        """``i < round(guided_fraction * N)``."""
        return is_guided(step, num_steps, self.guided_fraction)


@dataclass
class SynGenEntropyObjective(SynGenObjective):
    """Entropy-SynGen (spec §3): SynGen plus λ·(H_m + H_n) and the γ·H(A_u) term; same schedule."""

    name: ClassVar[str] = "syngen_entropy"
    lambda_entropy: float = 0.05
    gamma_entropy: float = 0.05
    entropy_neg_mode: str = "as_written"

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("entropy_neg_mode", self.entropy_neg_mode, ENTROPY_NEG_MODES)

    def _breakdown_kwargs(self) -> dict[str, Any]:
        return {
            "lambda_entropy": self.lambda_entropy,
            "gamma_entropy": self.gamma_entropy,
            "entropy_neg_mode": self.entropy_neg_mode,
        }


def subject_words(layout: TokenLayout) -> tuple[Word, ...]:
    """A&E / D&B subjects: ``layout.subjects`` when given, else the nouns of ``layout.bindings``."""
    if layout.subjects:
        return tuple(layout.subjects)
    return tuple(binding.noun for binding in layout.bindings)


def attribute_words(layout: TokenLayout) -> tuple[Word | None, ...]:
    """D&B attribute per subject: the first modifier of the binding with that noun, else ``None``."""
    first_modifier = {b.noun: (b.modifiers[0] if b.modifiers else None) for b in layout.bindings}
    return tuple(first_modifier.get(word) for word in subject_words(layout))


def eot_columns(layout: TokenLayout, num_tokens: int) -> list[ColumnRange]:
    """SD 2.x ``normalize_eot`` softmax columns per 77-chunk: ``(1, E)`` with E one past the chunk's last prompt
    token (an empty range for chunks without prompt tokens)."""
    ranges: list[ColumnRange] = []
    for offset in range(0, num_tokens, CHUNK_SIZE):
        inside = [p - offset for p in layout.prompt_positions if offset <= p < offset + CHUNK_SIZE]
        ranges.append((1, max(inside) + 1) if inside else (1, 1))
    return ranges


STOP_RULES = ("faithful", "fixed")
"""Refinement stop rules of A&E, D&B and T-SAM: ``faithful`` decides as the reference code (one update late,
T-SAM's inverted rule); ``fixed`` stops as soon as the newest latent meets the target (docs/refinement.md)."""


@dataclass
class _DecayingSchedule(_Validated, Objective):
    """Shared schedule of A&E, D&B and T-SAM: ``scale * sqrt(linspace(1, 0.5, N)[i])`` for i < round(f N)."""

    scale_factor: float = 20.0
    guided_fraction: float = 0.5

    def step_size(self, step: int, num_steps: int) -> float:
        """``scale_factor * sqrt(linspace(1, 0.5, N)[step])``."""
        return decaying_step_size(self.scale_factor, step, num_steps)

    def guides(self, step: int, num_steps: int) -> bool:
        """``i < round(guided_fraction * N)``."""
        return is_guided(step, num_steps, self.guided_fraction)


@dataclass
class AttendExciteObjective(_DecayingSchedule):
    """Attend-and-Excite (spec §4): refine at {0, 0.2N, 0.4N} while the loss is above 1 - threshold."""

    name: ClassVar[str] = "attend_and_excite"
    thresholds: tuple[float, float, float] = AE_THRESHOLDS
    max_refinement_steps: int = 20
    refine: bool = True
    stop_rule: str = "faithful"
    smooth: bool = True
    softmax_scale: float = 100.0
    normalize_eot: bool = False
    kernel_size: int = 3
    sigma: float = 0.5
    main_factor: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("stop_rule", self.stop_rule, STOP_RULES)

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
        """A&E loss on the main level; ``terms["maxima"]`` is ``[B, S]``."""
        maps = fp32_maps(select_main_level(attn, self.main_factor))
        subjects = subject_words(layout)
        if not subjects:
            zero = maps.reshape(maps.shape[0], -1)[:, :0].sum(dim=-1)
            return LossResult(total=zero, metric=zero.detach(), terms={})
        keep = eot_columns(layout, maps.shape[1]) if self.normalize_eot else None
        maxima = attend_excite_maxima(
            maps,
            subjects,
            smooth=self.smooth,
            scale=self.softmax_scale,
            keep=keep,
            kernel_size=self.kernel_size,
            sigma=self.sigma,
        )
        total = (1.0 - maxima).clamp(min=0.0).amax(dim=-1)
        return LossResult(total=total, metric=total.detach(), terms={"maxima": maxima.detach()})

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """At refinement points: continue while loss > 1 - threshold, at most ``max_refinement_steps``
        (``stop_rule`` faithful: judged one update late, as the reference)."""
        phase = refinement_phase(step, num_steps)
        if not self.refine or phase is None or not self.guides(step, num_steps):
            return None
        rule = metric_above(1.0 - self.thresholds[phase])
        return Refinement(self.max_refinement_steps, rule, lagged=self.stop_rule == "faithful")


@dataclass
class DivideBindObjective(_DecayingSchedule):
    """Divide & Bind (spec §5), ``tv_bind`` by default; refine while min TV is below the threshold.

    Attribute maps come from levels ``main/2`` and ``main/4`` (32x32 and 64x64 at a 16x16 main level),
    downsampled nearest to the main resolution and merged by map count; if neither level is present the main
    level is used. ``thresholds=None`` picks (0.05, 0.2, 0.3) for TV modes and (0.05, 0.5, 0.8) for ``max``.
    """

    name: ClassVar[str] = "divide_and_bind"
    loss_mode: str = "tv_bind"
    tv_variant: str = "faithful"
    thresholds: tuple[float, float, float] | None = None
    refinement_caps: str = "paper"
    bind_weights: tuple[float, float, float] = DB_BIND_WEIGHTS
    refine: bool = True
    stop_rule: str = "faithful"
    smooth: bool = True
    softmax_scale: float = 100.0
    normalize_eot: bool = False
    main_factor: int | None = None

    def requirement_error(self, layout: TokenLayout) -> str | None:
        """tv_bind's binding term needs an attribute (a modifier) on at least one subject."""
        if self.loss_mode == "tv_bind" and not any(word is not None for word in attribute_words(layout)):
            return ("divide_and_bind with loss_mode 'tv_bind' needs a modifier on at least one noun, and the "
                    "bindings have none. Add attributes to the prompt, or set 'loss_mode = tv' in advanced "
                    "(attendance only).")
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("loss_mode", self.loss_mode, DB_MODES)
        _choice("tv_variant", self.tv_variant, TV_VARIANTS)
        _choice("refinement_caps", self.refinement_caps, tuple(DB_REFINEMENT_CAPS))
        _choice("stop_rule", self.stop_rule, STOP_RULES)
        if self.thresholds is None:
            self.thresholds = DB_MAX_THRESHOLDS if self.loss_mode == "max" else DB_TV_THRESHOLDS

    def levels(self, main_factor: int) -> set[int]:
        """The main level, plus ``main/2`` and ``main/4`` (when >= 1) for ``tv_bind``'s attribute maps."""
        out = {main_factor}
        if self.loss_mode == "tv_bind":
            out |= {f for f in (main_factor // 2, main_factor // 4) if f >= 1}
        return out

    def _attribute_source(
        self, attn: Mapping[int, AttentionLevel], main: int, size: tuple[int, int]
    ) -> torch.Tensor | None:
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

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
        """D&B loss; ``metric`` is the refinement indicator (min TV, or min max-attention in ``max`` mode)."""
        main = self.main_factor if self.main_factor is not None else max(attn) if attn else 0
        maps = fp32_maps(select_main_level(attn, self.main_factor))
        objects = subject_words(layout)
        attributes = attribute_words(layout)
        source = None
        if self.loss_mode == "tv_bind" and any(attributes):
            source = self._attribute_source(attn, main, (maps.shape[-2], maps.shape[-1]))
        weight = divide_bind_weight(step, num_steps, self.bind_weights)
        keep = eot_columns(layout, maps.shape[1]) if self.normalize_eot else None
        out = divide_bind_breakdown(
            maps,
            objects,
            source,
            attributes,
            bind_weight=weight,
            mode=self.loss_mode,
            tv_variant=self.tv_variant,
            smooth=self.smooth,
            scale=self.softmax_scale,
            keep=keep,
        )
        terms = {
            "tv": out.tv.detach(),
            "maxima": out.maxima.detach(),
            "bind_jsd": out.bind_jsd.detach(),
            "bind_weight": torch.tensor(weight),
        }
        return LossResult(total=out.total, metric=out.indicator, terms=terms)

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """At refinement points: continue while the indicator is below the threshold, up to the cap
        (``stop_rule`` faithful: judged one update late, as the reference)."""
        phase = refinement_phase(step, num_steps)
        if not self.refine or phase is None or not self.guides(step, num_steps):
            return None
        assert self.thresholds is not None
        cap = divide_bind_refinement_caps(self.refinement_caps, self.loss_mode)[phase]
        return Refinement(cap, metric_below(self.thresholds[phase]), lagged=self.stop_rule == "faithful")


@dataclass
class TSAMObjective(_DecayingSchedule):
    """T-SAM (spec §6). ``loss_type="code"`` (default: step 5, i < 0.6 N) or ``"paper"`` (step 10, i < 0.5 N);
    ``scale_factor`` / ``guided_fraction`` left as ``None`` take the loss type's defaults.

    Refinement runs at every refinement point (no entry test), up to ``refinement_iterations`` (30).
    ``stop_rule="faithful"`` keeps the reference's inverted rule: after ``break_iteration`` (20) updates it
    stops if the loss of the latent before the last update is still above τ(n), otherwise runs on to 30.
    ``"fixed"`` stops as soon as the newest latent's loss is <= τ(n). τ(n) = 0.14 (n - 1) for every n (the
    reference raises ``KeyError`` outside n in {5, 6, 7}).

    ``text_self_attention`` passed to :meth:`loss` is the raw T' averaged over layers and heads,
    ``[L, L]`` or ``[B, L, L]``, including SOT at 0 and EOT at n + 1 (``L >= n + 2``, e.g. the full 77x77);
    an ``[n, n]`` matrix is taken as an already prepared T. Only first-chunk prompt tokens are used.
    """

    name: ClassVar[str] = "tsam"
    scale_factor: float | None = None  # type: ignore[assignment]
    guided_fraction: float | None = None  # type: ignore[assignment]
    loss_type: str = "code"
    power: float = 3.0
    row_weight: float = 0.2
    smooth: bool = True
    refine: bool = True
    refinement_iterations: int = 30
    break_iteration: int = 20
    stop_rule: str = "faithful"
    main_factor: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("loss_type", self.loss_type, TSAM_LOSS_TYPES)
        _choice("stop_rule", self.stop_rule, STOP_RULES)
        if self.scale_factor is None:
            self.scale_factor = 5.0 if self.loss_type == "code" else 10.0
        if self.guided_fraction is None:
            self.guided_fraction = 0.6 if self.loss_type == "code" else 0.5

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
        """T-SAM loss; ``terms["num_tokens"]`` carries n for the refinement threshold."""
        maps = fp32_maps(select_main_level(attn, self.main_factor))
        positions = [p for p in layout.prompt_positions if p < CHUNK_SIZE]
        n = len(positions)
        n_term = torch.tensor(float(n))
        if n < 2:
            zero = maps.reshape(maps.shape[0], -1)[:, :0].sum(dim=-1)
            return LossResult(total=zero, metric=zero.detach(), terms={"num_tokens": n_term})
        if text_self_attention is None:
            raise ValueError("the T-SAM objective needs text_self_attention (the CLIP text self-attention T')")
        raw = text_self_attention.to(device=maps.device, dtype=torch.float32)
        if raw.shape[-1] == n:
            text = raw
        elif raw.shape[-1] >= n + 2:
            text = text_attention_matrix(raw, eot_index=n + 1, power=self.power)
        else:
            raise ValueError(f"text_self_attention is {tuple(raw.shape)}; need [.., L, L] with L >= {n + 2} or = {n}")
        similarity = cross_attention_similarity(maps, positions, smooth=self.smooth)
        if self.loss_type == "code":
            rows = tsam_code_row_terms(text, similarity, self.row_weight)
        else:
            rows = tsam_paper_row_terms(text, similarity)
        total = rows.sum(dim=-1)
        return LossResult(total=total, metric=total.detach(), terms={"rows": rows.detach(), "num_tokens": n_term})

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """Refinement at every refinement point while guided (see the class docstring for the stop rules)."""
        phase = refinement_phase(step, num_steps)
        if not self.refine or phase is None or not self.guides(step, num_steps):
            return None
        faithful = self.stop_rule == "faithful"
        break_at = self.break_iteration

        def rule(result: LossResult, done: int) -> bool:
            n = int(result.terms["num_tokens"].item()) if "num_tokens" in result.terms else 0
            tau = tsam_threshold(n)
            loss = result.metric.detach()
            if faithful:
                return done != break_at or bool((loss <= tau).any())
            return bool((loss > tau).any())

        return Refinement(self.refinement_iterations, rule, lagged=faithful)


class ObjectiveChain(Objective):
    """Weighted sum of objectives. Levels are the union; step size, guided steps and refinement
    (and the refinement ``metric``) come from the FIRST term."""

    name = "chain"

    def __init__(self, terms: Sequence[tuple[float, Objective]]) -> None:
        if not terms:
            raise ValueError("ObjectiveChain needs at least one (weight, objective) term")
        self.terms: tuple[tuple[float, Objective], ...] = tuple((float(w), obj) for w, obj in terms)
        self.name = "+".join(obj.name for _, obj in self.terms)

    def active(self, layout: TokenLayout) -> bool:
        """Active when any term is."""
        return any(objective.active(layout) for _, objective in self.terms)

    def requirement_error(self, layout: TokenLayout) -> str | None:
        """The first term's complaint, if any."""
        return next((e for _, obj in self.terms if (e := obj.requirement_error(layout)) is not None), None)

    def levels(self, main_factor: int) -> set[int]:
        """Union of every term's levels."""
        out: set[int] = set()
        for _, obj in self.terms:
            out |= obj.levels(main_factor)
        return out

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
        """``sum_j w_j * L_j``; terms are prefixed ``"<index>.<name>."``."""
        total: torch.Tensor | None = None
        metric: torch.Tensor | None = None
        terms: dict[str, torch.Tensor] = {}
        for j, (weight, obj) in enumerate(self.terms):
            result = obj.loss(attn, layout, step, num_steps, text_self_attention)
            weighted = weight * result.total
            total = weighted if total is None else total + weighted
            if metric is None:
                metric = result.metric
            prefix = f"{j}.{obj.name}"
            terms[f"{prefix}.total"] = result.total.detach()
            for key, value in result.terms.items():
                terms[f"{prefix}.{key}"] = value
        assert total is not None and metric is not None
        return LossResult(total=total, metric=metric, terms=terms)

    def step_size(self, step: int, num_steps: int) -> float:
        """The first term's step size."""
        return self.terms[0][1].step_size(step, num_steps)

    def guides(self, step: int, num_steps: int) -> bool:
        """The first term's guided steps."""
        return self.terms[0][1].guides(step, num_steps)

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """The first term's refinement (its rule reads the chain result's ``metric``, the first term's)."""
        return self.terms[0][1].refinement(step, num_steps)


_REGISTRY: dict[str, type[Objective]] = {
    "syngen": SynGenObjective,
    "syngen_entropy": SynGenEntropyObjective,
    "divide_and_bind": DivideBindObjective,
    "attend_and_excite": AttendExciteObjective,
    "tsam": TSAMObjective,
}

METHODS = frozenset(_REGISTRY)
"""Registered method names."""


def _public_fields(cls: type[Objective]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]


def default_params(method: str) -> dict[str, Any]:
    """The default hyperparameters of ``method`` (spec defaults) as a plain dict."""
    cls = _lookup(method)
    instance = cls()
    return {name: getattr(instance, name) for name in _public_fields(cls)}


def make_objective(method: str, **params: Any) -> Objective:
    """Build the objective for ``method``; unknown parameters raise ``ValueError`` naming the valid ones."""
    cls = _lookup(method)
    valid = _public_fields(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; valid parameters: {valid}")
    return cls(**params)


def _lookup(method: str) -> type[Objective]:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_REGISTRY)}") from None


__all__ = [
    "METHODS",
    "STOP_RULES",
    "AttendExciteObjective",
    "DivideBindObjective",
    "LossResult",
    "Objective",
    "ObjectiveChain",
    "Refinement",
    "SynGenEntropyObjective",
    "SynGenObjective",
    "TSAMObjective",
    "decaying_step_size",
    "default_params",
    "make_objective",
]
