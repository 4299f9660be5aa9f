"""The method registry and ``ObjectiveChain`` (a weighted sum of objectives).

Each method's ``Objective`` lives beside its loss function (``syngen.py``, ``attend_excite.py``,
``divide_bind.py``, ``tsam.py``); its hyperparameters are declared settings (``settings.setting``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..settings import Setting, convert_fields, declared_settings, setting, unknown_keys_error
from .attend_excite import AttendExciteObjective
from .base import STOP_RULES, WEIGHT, LossResult, Objective, Refinement
from .divide_bind import DivideBindObjective
from .schedules import decaying_step_size
from .syngen import SynGenEntropyObjective, SynGenObjective
from .tsam import TSAMObjective
from .types import AttentionLevel, TokenLayout

_REGISTRY: dict[str, type[Objective]] = {
    "syngen": SynGenObjective,
    "syngen_entropy": SynGenEntropyObjective,
    "divide_and_bind": DivideBindObjective,
    "attend_and_excite": AttendExciteObjective,
    "tsam": TSAMObjective,
}

METHODS = frozenset(_REGISTRY)
"""Registered method names."""


def objective_class(method: str) -> type[Objective]:
    """The ``Objective`` class registered for ``method``."""
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_REGISTRY)}") from None


def method_settings(method: str) -> dict[str, Setting]:
    """The declared hyperparameters of ``method`` (name, type, range, default, help)."""
    return declared_settings(objective_class(method))


def default_params(method: str) -> dict[str, Any]:
    """The default hyperparameters of ``method`` (spec defaults) as a plain dict."""
    cls = objective_class(method)
    instance = cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]


def make_objective(method: str, /, **params: Any) -> Objective:
    """Build the objective for ``method``; unknown parameters and refused values raise ``ValueError`` naming them."""
    valid = method_settings(method)
    unknown = set(params) - set(valid)
    if unknown:
        raise unknown_keys_error(unknown, valid, f"method {method!r}")
    return objective_class(method)(**params)


@dataclass(frozen=True)
class ChainTerm:
    """One weighted term of an ``ObjectiveChain``."""

    objective: Objective
    weight: float = setting(1.0, "weight of this loss in the chain's sum", bounds=WEIGHT)

    def __post_init__(self) -> None:
        convert_fields(self)


class ObjectiveChain(Objective):
    """Weighted sum of objectives. Levels are the union; step size, guided steps and refinement
    (and the refinement ``metric``) come from the FIRST term."""

    name = "chain"

    def __init__(self, terms: Sequence[tuple[float, Objective]]) -> None:
        if not terms:
            raise ValueError("ObjectiveChain needs at least one (weight, objective) term")
        checked = [ChainTerm(objective, weight) for weight, objective in terms]
        self.terms: tuple[tuple[float, Objective], ...] = tuple((term.weight, term.objective) for term in checked)
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

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
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


__all__ = [
    "METHODS",
    "STOP_RULES",
    "AttendExciteObjective",
    "ChainTerm",
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
    "method_settings",
    "objective_class",
]
