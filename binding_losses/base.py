"""The objective interface: loss results, refinement rules, the ``Objective`` base class and the two step
schedules every method uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..settings import Bounds, convert_fields, setting
from .schedules import decaying_step_size, is_guided, refinement_phase
from .types import AttentionLevel, TokenLayout

STEP_SIZE = Bounds(0.0, 1000.0)
"""Latent step size (the ``step_size`` widget and ``scale_factor``): above 1000 the update swamps the latent."""
FRACTION = Bounds(0.0, 1.0)
UNIT_THRESHOLDS = Bounds(0.0, 1.0)
"""Thresholds on attention values, which lie in [0, 1]."""
ITERATIONS = Bounds(1, 1000)
WEIGHT = Bounds(0.0, 100.0)
"""Weights of loss terms (also the Binding Loss Config ``weight`` widget)."""
SOFTMAX_SCALE = Bounds(0.0, 1000.0, exclusive_minimum=True)
STOP_RULES = ("faithful", "fixed")
"""Refinement stop rules of A&E, D&B and T-SAM: ``faithful`` decides as the reference code (one update late,
T-SAM's inverted rule); ``fixed`` stops as soon as the newest latent meets the target (docs/refinement.md)."""


@dataclass
class LossResult:
    """What an objective's ``loss`` returns.

    ``total`` is the loss per batch item ``[B]`` (fp32, differentiable). ``metric`` ``[B]`` is what the
    method's refinement rule watches (the loss itself for SynGen, A&E and T-SAM; min TV for D&B).
    ``terms`` holds named diagnostics (detached or not; do not backpropagate through them).
    """

    total: torch.Tensor
    metric: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


RefinementRule = Callable[[LossResult, int], bool]
"""``rule(result, updates_done) -> bool``: judging ``result``, should refinement update number ``updates_done + 1``
run?"""


@dataclass(frozen=True)
class Refinement:
    """Iterative refinement at one loop index (A&E, D&B, T-SAM); :func:`binding_losses.refinement.refine` runs it.

    Before each update, :meth:`continues` decides on a watched loss result. With ``lagged`` (the reference code of
    all three methods) that is the result of the latent *before* the last update (the starting latent's, before
    the first two updates), so the reference takes one more update than a check on the newest latent would.
    Without ``lagged`` it is the newest latent's result. With a batch, refinement continues while any item needs it.
    """

    max_iterations: int
    rule: RefinementRule
    lagged: bool = True

    def continues(self, watched: LossResult, updates_done: int) -> bool:
        """True if update number ``updates_done + 1`` should run, judging ``watched``."""
        return updates_done < self.max_iterations and self.rule(watched, updates_done)


def metric_above(target: float) -> RefinementRule:
    """Continue while any item's metric is strictly above ``target`` (A&E: loss > 1 - threshold)."""

    def rule(result: LossResult, _done: int) -> bool:
        return bool((result.metric.detach() > target).any())

    return rule


def metric_below(threshold: float) -> RefinementRule:
    """Continue while any item's metric is strictly below ``threshold`` (D&B: min TV < threshold)."""

    def rule(result: LossResult, _done: int) -> bool:
        return bool((result.metric.detach() < threshold).any())

    return rule


def select_main_level(attn: Mapping[int, AttentionLevel]) -> AttentionLevel:
    """The main attention level: the largest factor present (the sampler records the main level and, for
    D&B's attribute maps, finer ones; ``GuidanceConfig.main_factor`` chooses which)."""
    if not attn:
        raise ValueError("no attention levels were recorded")
    return attn[max(attn)]


def fp32_maps(level: AttentionLevel) -> torch.Tensor:
    """The level's mean maps as fp32 ``[B, K, H, W]``."""
    mean = level.mean
    if mean.dim() == 3:
        mean = mean.unsqueeze(0)
    return mean.float()


class Objective:
    """Base class of every method objective (each lives beside its loss; ``objectives.py`` registers them).
    Subclasses set ``name``."""

    name: str = "objective"

    def active(self, layout: TokenLayout) -> bool:
        """Whether this layout gives the method anything to guide (else sampling runs unguided)."""
        return bool(layout.bindings or layout.subjects)

    def requirement_error(self, layout: TokenLayout) -> str | None:
        """Why this layout cannot be guided by this method as configured (None when it can)."""
        return None

    def levels(self, main_factor: int) -> set[int]:
        """Attention levels needed, keyed by downsampling factor from the latent."""
        return {main_factor}

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
        """Compute the loss on recorded attention at loop index ``step`` of ``num_steps``."""
        raise NotImplementedError

    def step_size(self, step: int, num_steps: int) -> float:
        """Latent step size α_i."""
        raise NotImplementedError

    def guides(self, step: int, num_steps: int) -> bool:
        """Whether loop index ``step`` gets a guidance update."""
        raise NotImplementedError

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """Refinement to run before the regular update at ``step``, or ``None``."""
        return None


@dataclass
class ConstantSchedule(Objective):
    """An objective whose fields are declared settings (converted and checked on construction), guided at loop
    indices ``i < round(guided_fraction * N)`` with a constant step ``scale_factor`` (SynGen's schedule)."""

    scale_factor: float = setting(
        20.0, "latent step size of the gradient update (`scale_factor` in advanced)", bounds=STEP_SIZE
    )
    guided_fraction: float = setting(
        0.5, "fraction of the sampling steps that are guided, from the first", bounds=FRACTION
    )

    def __post_init__(self) -> None:
        convert_fields(self)

    def step_size(self, step: int, num_steps: int) -> float:
        """Constant ``scale_factor``."""
        return float(self.scale_factor)

    def guides(self, step: int, num_steps: int) -> bool:
        """``i < round(guided_fraction * N)``."""
        return is_guided(step, num_steps, self.guided_fraction)


@dataclass
class DecayingSchedule(ConstantSchedule):
    """Shared schedule of A&E, D&B and T-SAM: ``scale * sqrt(linspace(1, 0.5, N)[i])`` for i < round(f N), with
    refinement at the three refinement points {0, 0.2 N, 0.4 N} of the guided steps."""

    refine: bool = setting(True, "`false` skips the extra refinement iterations (faster, weaker)")
    stop_rule: str = setting(
        "faithful",
        "when refinement stops: `faithful` decides as the reference code (one update late; T-SAM's inverted rule), "
        "`fixed` as soon as the newest latent meets the target (see \"Refinement stop rules\" below)",
        choices=STOP_RULES,
    )
    smooth: bool = setting(True, "Gaussian-smooth the maps before the loss")

    def step_size(self, step: int, num_steps: int) -> float:
        """``scale_factor * sqrt(linspace(1, 0.5, N)[step])``."""
        return decaying_step_size(self.scale_factor, step, num_steps)

    def refinement(self, step: int, num_steps: int) -> Refinement | None:
        """The method's refinement at a guided refinement point (0, 1 or 2), when ``refine`` is on."""
        phase = refinement_phase(step, num_steps)
        if not self.refine or phase is None or not self.guides(step, num_steps):
            return None
        return self.refinement_at(phase)

    def refinement_at(self, phase: int) -> Refinement:
        """The refinement loop at refinement point ``phase``."""
        raise NotImplementedError
