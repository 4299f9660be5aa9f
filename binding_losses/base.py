"""The objective interface: loss results, refinement rules and the ``Objective`` base class."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .types import AttentionLevel, TokenLayout


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


def select_main_level(attn: Mapping[int, AttentionLevel], main_factor: int | None = None) -> AttentionLevel:
    """The main attention level: ``attn[main_factor]`` if given, else the largest factor present."""
    if not attn:
        raise ValueError("no attention levels were recorded")
    if main_factor is not None:
        if main_factor not in attn:
            raise ValueError(f"attention level {main_factor} missing; have {sorted(attn)}")
        return attn[main_factor]
    return attn[max(attn)]


def fp32_maps(level: AttentionLevel) -> torch.Tensor:
    """The level's mean maps as fp32 ``[B, K, H, W]``."""
    mean = level.mean
    if mean.dim() == 3:
        mean = mean.unsqueeze(0)
    return mean.float()


class Objective:
    """Base class of every method objective (see ``objectives.py``). Subclasses set ``name``."""

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

    def loss(
        self,
        attn: Mapping[int, AttentionLevel],
        layout: TokenLayout,
        step: int,
        num_steps: int,
        text_self_attention: torch.Tensor | None = None,
    ) -> LossResult:
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
