"""What happened during guidance: per-step losses and the last recorded attention maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StepRecord:
    """One guided step."""

    step: int
    sigma: float
    loss_before: float
    loss_after_refinement: float
    refinement_iterations: int
    stepped: bool
    step_size: float
    loss_after_step: float | None = None
    """Loss re-measured after the update (only with ``GuidanceConfig.measure_after_step``)."""


@dataclass
class GuidanceReport:
    """Collected by the guided sampler during one run."""

    main_factor: int
    num_steps: int
    steps: list[StepRecord] = field(default_factory=list)
    last_maps: torch.Tensor | None = None
    """``[B, K, H, W]`` maps at the main level from the last guided step (fp32, CPU)."""

    def add(self, record: StepRecord, maps: torch.Tensor | None) -> None:
        """Append a step and keep its maps as the latest."""
        self.steps.append(record)
        if maps is not None:
            self.last_maps = maps.float().cpu()

    def to_dict(self) -> dict:
        """JSON-friendly summary (maps left out)."""
        return {
            "main_factor": self.main_factor,
            "num_steps": self.num_steps,
            "steps": [
                {
                    "step": r.step,
                    "sigma": r.sigma,
                    "loss_before_update": r.loss_before,
                    "loss_after_refinement": r.loss_after_refinement,
                    "loss_after_update": r.loss_after_step,
                    "refinement_iterations": r.refinement_iterations,
                    "stepped": r.stepped,
                    "step_size": r.step_size,
                }
                for r in self.steps
            ],
        }

    @property
    def losses(self) -> list[float]:
        """Loss at the start of each guided step, in step order."""
        return [record.loss_before for record in self.steps]
