"""SynGen loss (spec §2.3) and its entropy variant (spec §3), on raw aggregated attention maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..settings import Bounds, setting
from ._util import as_batched, check_positions, zero_total
from .base import ConstantSchedule, LossResult, fp32_maps, select_main_level
from .distances import entropy, pairwise_symmetric_kl
from .types import AttentionLevel, TokenBinding, TokenLayout, Word

ENTROPY_NEG_MODES = ("as_written", "prose_intent")


@dataclass(frozen=True)
class PairTerm:
    """One SynGen term: a (modifier, noun) pair, or a noun-only set when ``modifier`` is ``None``.

    ``positive`` and ``negative`` are ``[B]``; ``negative`` already carries its minus sign.
    """

    noun: Word
    modifier: Word | None
    positive: torch.Tensor
    negative: torch.Tensor


@dataclass(frozen=True)
class SynGenBreakdown:
    """``total = positive + negative``, each ``[B]``, plus the per-pair terms in binding order."""

    total: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    pairs: tuple[PairTerm, ...]


def _word_max(table: torch.Tensor, index: dict[int, int], word: Word, others: Sequence[int]) -> torch.Tensor:
    """``max over pieces k of word`` of ``table[:, k, u]`` for each u in others: ``[B, len(others)]``."""
    rows = torch.stack([table[:, index[k]] for k in word], dim=0)  # [pieces, B, P]
    cols = torch.tensor([index[u] for u in others], dtype=torch.long, device=table.device)
    return rows.index_select(-1, cols).amax(dim=0)


class _WordDistances:
    """Symmetric-KL distances (and entropies, when needed) of the prompt's tokens, addressed by word."""

    def __init__(self, selected: torch.Tensor, order: Sequence[int], use_entropy: bool, gamma_sign: float) -> None:
        self.index = {pos: i for i, pos in enumerate(order)}
        self.dist = pairwise_symmetric_kl(selected)  # [B, P, P]
        self.ent = entropy(selected) if use_entropy else None  # [B, P]
        self.gamma_sign = gamma_sign

    def closest(self, word: Word, others: Sequence[int]) -> torch.Tensor:
        """``max over pieces`` of the distance to each of ``others``: ``[B, len(others)]``."""
        return _word_max(self.dist, self.index, word, others)

    def mean_distance(self, word: Word, unrelated: list[int]) -> torch.Tensor:
        """``mean_u d(word, u)`` over U, ``[B]``."""
        return self.closest(word, unrelated).mean(dim=-1)

    def word_entropy(self, word: Word) -> torch.Tensor:
        """A word's entropy: the max over its pieces, ``[B]``."""
        assert self.ent is not None
        return torch.stack([self.ent[:, self.index[k]] for k in word], dim=0).amax(dim=0)

    def gamma_term(self, gamma_entropy: float, unrelated: list[int]) -> torch.Tensor | float:
        """``sign * gamma * mean_u H(u)``: the γ part inside the negative term's parentheses."""
        if gamma_entropy == 0.0:
            return 0.0
        assert self.ent is not None
        cols = torch.tensor([self.index[u] for u in unrelated], dtype=torch.long, device=self.ent.device)
        return self.gamma_sign * gamma_entropy * self.ent.index_select(-1, cols).mean(dim=-1)


def syngen_breakdown(
    maps: torch.Tensor,
    bindings: Sequence[TokenBinding],
    prompt_positions: Sequence[int],
    *,
    lambda_entropy: float = 0.0,
    gamma_entropy: float = 0.0,
    entropy_neg_mode: str = "as_written",
) -> SynGenBreakdown:
    """SynGen / entropy-SynGen loss with every term exposed.

    ``maps`` is ``[B, K, H, W]`` (or ``[K, H, W]``): raw aggregated cross-attention probabilities, no token
    softmax, no smoothing. A word's distance is the max over its pieces (spec §2.2); so is its entropy.
    ``U(S)`` is ``prompt_positions`` minus the binding's positions. Bindings with no modifiers get the
    negative-only term. With ``lambda_entropy = gamma_entropy = 0`` this is exactly SynGen.

    ``entropy_neg_mode``: ``"as_written"`` puts ``-gamma*H(A_u)`` inside the negative term's parentheses
    (the printed formula, sharpens unrelated maps); ``"prose_intent"`` uses ``+gamma*H(A_u)`` (diffuses them).
    """
    if entropy_neg_mode not in ENTROPY_NEG_MODES:
        raise ValueError(f"entropy_neg_mode must be one of {ENTROPY_NEG_MODES}, got {entropy_neg_mode!r}")
    maps = as_batched(maps)
    zero = zero_total(maps)
    if not bindings:
        return SynGenBreakdown(zero, zero, zero, ())

    used = set(prompt_positions)
    for binding in bindings:
        used |= binding.positions
    check_positions(used, maps.shape[1])
    order = sorted(used)
    words = _WordDistances(maps[:, order], order, lambda_entropy != 0.0 or gamma_entropy != 0.0,
                           1.0 if entropy_neg_mode == "as_written" else -1.0)
    prompt_set = list(dict.fromkeys(prompt_positions))
    pairs: list[PairTerm] = []
    for binding in bindings:
        unrelated = [u for u in prompt_set if u not in binding.positions]
        pairs.extend(_binding_terms(words, binding, unrelated, zero, lambda_entropy, gamma_entropy))

    positive_total = torch.stack([p.positive for p in pairs]).sum(dim=0)
    negative_total = torch.stack([p.negative for p in pairs]).sum(dim=0)
    return SynGenBreakdown(positive_total + negative_total, positive_total, negative_total, tuple(pairs))


def _binding_terms(
    words: _WordDistances,
    binding: TokenBinding,
    unrelated: list[int],
    zero: torch.Tensor,
    lambda_entropy: float,
    gamma_entropy: float,
) -> list[PairTerm]:
    """One binding's terms: one per modifier, or a negative-only term for a noun without modifiers."""
    noun = binding.noun
    if not binding.modifiers:
        negative = -(words.mean_distance(noun, unrelated) - words.gamma_term(gamma_entropy, unrelated)) \
            if unrelated else zero
        return [PairTerm(noun, None, zero, negative)]
    noun_neg = words.mean_distance(noun, unrelated) if unrelated else None
    terms = []
    for modifier in binding.modifiers:
        positive = words.closest(modifier, list(noun)).amax(dim=-1)
        if lambda_entropy != 0.0:
            positive = positive + lambda_entropy * (words.word_entropy(modifier) + words.word_entropy(noun))
        if noun_neg is None:
            negative = zero
        else:
            gamma = words.gamma_term(gamma_entropy, unrelated)
            negative = -0.5 * (words.mean_distance(modifier, unrelated) + noun_neg - gamma)
        terms.append(PairTerm(noun, modifier, positive, negative))
    return terms


def syngen_loss(maps: torch.Tensor, bindings: Sequence[TokenBinding], prompt_positions: Sequence[int]) -> torch.Tensor:
    """SynGen loss per batch item ``[B]`` (spec §2.3): pull modifier/noun maps together, push from U(S)."""
    return syngen_breakdown(maps, bindings, prompt_positions).total


def syngen_entropy_loss(
    maps: torch.Tensor,
    bindings: Sequence[TokenBinding],
    prompt_positions: Sequence[int],
    lambda_entropy: float = 0.05,
    gamma_entropy: float = 0.05,
    entropy_neg_mode: str = "as_written",
) -> torch.Tensor:
    """Entropy-SynGen loss per batch item ``[B]`` (spec §3); equals :func:`syngen_loss` at λ = γ = 0."""
    return syngen_breakdown(
        maps,
        bindings,
        prompt_positions,
        lambda_entropy=lambda_entropy,
        gamma_entropy=gamma_entropy,
        entropy_neg_mode=entropy_neg_mode,
    ).total


ENTROPY_WEIGHT = Bounds(0.0, 10.0)


@dataclass
class SynGenObjective(ConstantSchedule):
    """SynGen (spec §2): constant step 20 at loop indices i < round(0.5 N), no refinement."""

    name: ClassVar[str] = "syngen"
    include_entities: bool = setting(False, "`true` also guides nouns that have no modifier (negative term only)")
    """Reference default False: entities without modifiers get no set."""

    def _breakdown_kwargs(self) -> dict[str, Any]:
        return {}

    def _bindings(self, layout: TokenLayout) -> tuple:
        if self.include_entities:
            return tuple(layout.bindings)
        return tuple(binding for binding in layout.bindings if binding.modifiers)

    def active(self, layout: TokenLayout) -> bool:
        """SynGen guides only when some entity has a modifier (or every entity, with ``include_entities``)."""
        return bool(self._bindings(layout))

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
        """SynGen loss on the main level's raw maps."""
        maps = fp32_maps(select_main_level(attn))
        out = syngen_breakdown(maps, self._bindings(layout), layout.prompt_positions, **self._breakdown_kwargs())
        terms = {"positive": out.positive.detach(), "negative": out.negative.detach()}
        return LossResult(total=out.total, metric=out.total.detach(), terms=terms)


@dataclass
class SynGenEntropyObjective(SynGenObjective):
    """Entropy-SynGen (spec §3): SynGen plus λ·(H_m + H_n) and the γ·H(A_u) term; same schedule."""

    name: ClassVar[str] = "syngen_entropy"
    lambda_entropy: float = setting(0.05, "weight λ of the modifier and noun entropy term", bounds=ENTROPY_WEIGHT)
    gamma_entropy: float = setting(0.05, "weight γ of the unrelated-token entropy term", bounds=ENTROPY_WEIGHT)
    entropy_neg_mode: str = setting(
        "as_written",
        "how the negative entropy term is read from the paper: `as_written` (the printed formula) or "
        "`prose_intent` (the sign the text describes)",
        choices=ENTROPY_NEG_MODES,
    )

    def _breakdown_kwargs(self) -> dict[str, Any]:
        return {
            "lambda_entropy": self.lambda_entropy,
            "gamma_entropy": self.gamma_entropy,
            "entropy_neg_mode": self.entropy_neg_mode,
        }
