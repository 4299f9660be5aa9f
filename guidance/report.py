"""What happened during guidance: per-step losses, skipped updates and why, and the last recorded attention maps."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field

import torch


def _json_number(value: float | None) -> float | str | None:
    """``value`` for the UI's JSON: a non-finite float becomes its name ("nan", "inf"), which JSON can carry."""
    return value if value is None or math.isfinite(value) else str(value)


@dataclass(frozen=True)
class StepRecord:
    """One guided step."""

    step: int
    sigma: float
    loss_before: float
    loss_after_refinement: float
    refinement_iterations: int
    """Refinement updates applied to the latent at this step."""
    stepped: bool
    step_size: float
    loss_after_step: float | None = None
    """Loss re-measured after the update (only with ``GuidanceConfig.measure_after_step``)."""
    skipped: str | None = None
    """Why this step's update was not applied (None when it was, or when the step only refines)."""
    refinement_stopped: str | None = None
    """Why refinement ended on an iteration that was not applied (a non-finite latent or loss), or None."""

    @property
    def moved_latent(self) -> bool:
        """Whether guidance changed the latent at this step (its update, or an accepted refinement iteration)."""
        return self.stepped or self.refinement_iterations > 0


@dataclass
class GuidanceReport:
    """Collected by the guided sampler during one run."""

    main_factor: int
    num_steps: int
    steps: list[StepRecord] = field(default_factory=list)
    last_maps: torch.Tensor | None = None
    """``[B, K, H, W]`` maps at the main level from the last guided step (fp32, CPU)."""
    inactive_reason: str | None = None
    """Why the run had nothing to guide (then ``steps`` is empty), or None."""
    note: str | None = None
    """How the run guided, where it differs from what its mode says (appended to :attr:`message`), or None."""

    def add(self, record: StepRecord, maps: torch.Tensor | None) -> None:
        """Append a step and keep its maps as the latest."""
        self.steps.append(record)
        if maps is not None:
            self.last_maps = maps.float().cpu()

    def mark_skipped(self, step: int, reason: str) -> None:
        """Record that the update of ``step`` was not applied after all (fast mode applies it one step later)."""
        self.steps = [
            dataclasses.replace(r, stepped=False, skipped=reason) if r.step == step else r for r in self.steps
        ]

    @property
    def applied(self) -> bool:
        """Whether guidance changed the latent at any step."""
        return any(record.moved_latent for record in self.steps)

    @property
    def message(self) -> str:
        """One sentence on what guidance did, in words: says so plainly when it did nothing; then the note."""
        return self._outcome if self.note is None else f"{self._outcome} Note: {self.note}."

    @property
    def _outcome(self) -> str:
        if self.inactive_reason is not None:
            return f"Guidance did nothing: {self.inactive_reason}."
        if not self.steps:
            return "Guidance did nothing: no step was guided."
        skipped = Counter(record.skipped for record in self.steps if record.skipped is not None)
        skipped.update(record.refinement_stopped for record in self.steps if record.refinement_stopped is not None)
        reasons = "; ".join(f"{reason} ({count}x)" for reason, count in skipped.items())
        guided = f"{len(self.steps)} guided step{'' if len(self.steps) == 1 else 's'}"
        if not self.applied:
            return f"Guidance did nothing: no update of the {guided} was applied ({reasons})."
        moved = sum(record.moved_latent for record in self.steps)
        summary = f"Guidance moved the latent at {moved} of {guided}"
        return f"{summary}; skipped: {reasons}." if reasons else f"{summary}."

    def to_dict(self) -> dict:
        """JSON-friendly summary (maps left out)."""
        return {
            "main_factor": self.main_factor,
            "num_steps": self.num_steps,
            "guidance_applied": self.applied,
            "message": self.message,
            "steps": [
                {
                    "step": r.step,
                    "sigma": r.sigma,
                    "loss_before_update": _json_number(r.loss_before),
                    "loss_after_refinement": _json_number(r.loss_after_refinement),
                    "loss_after_update": _json_number(r.loss_after_step),
                    "refinement_iterations": r.refinement_iterations,
                    "stepped": r.stepped,
                    "skipped": r.skipped,
                    "refinement_stopped": r.refinement_stopped,
                    "step_size": r.step_size,
                }
                for r in self.steps
            ],
        }

    @property
    def losses(self) -> list[float]:
        """Loss at the start of each guided step, in step order."""
        return [record.loss_before for record in self.steps]
