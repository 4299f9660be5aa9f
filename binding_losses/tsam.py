"""T-SAM losses (spec §6): match cross-attention similarity to the text self-attention structure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional

from ..settings import Bounds, setting
from ._util import as_batched, check_positions, zero_total
from .base import (
    FRACTION,
    ITERATIONS,
    STEP_SIZE,
    DecayingSchedule,
    LossResult,
    Refinement,
    fp32_maps,
    select_main_level,
)
from .schedules import tsam_threshold
from .smoothing import DEFAULT_KERNEL_SIZE, DEFAULT_SIGMA, gaussian_smooth
from .types import AttentionLevel, TokenLayout

TSAM_LOSS_TYPES = ("code", "paper")


def text_attention_matrix(
    raw: torch.Tensor, tokens: Sequence[int] | None = None, power: float = 3.0, eps: float = 1e-7
) -> torch.Tensor:
    """T from the raw text self-attention T' (already averaged over layers and heads).

    ``raw`` is ``[..., L, L]``; ``tokens`` are the rows (= columns) of the n prompt tokens, in order (default
    ``1 .. L-2``: CLIP's ``[n+2, n+2]`` with SOT first and EOT last). Takes ``T''`` = those rows and columns and
    keeps its lower triangle (each token against itself and the tokens before it: a no-op on CLIP's causal
    matrix; a bidirectional encoder such as T5 also attends forwards, which T-SAM never compares), raises it to
    ``power`` (k = 3) and renormalises rows: ``T_ij = T''_ij^k / (sum_j T''_ij^k + eps)``. Returns ``[..., n, n]``.
    """
    rows = list(range(1, raw.shape[-1] - 1) if tokens is None else tokens)
    check_positions(set(rows), raw.shape[-1])
    index = torch.tensor(rows, dtype=torch.long, device=raw.device)
    inner = raw.index_select(-2, index).index_select(-1, index).tril()
    powered = inner.pow(power)
    return powered / (powered.sum(dim=-1, keepdim=True) + eps)


def cross_attention_similarity(
    maps: torch.Tensor,
    positions: Sequence[int],
    *,
    smooth: bool = True,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> torch.Tensor:
    """C ``[B, n, n]`` for raw maps ``[B, K, H, W]`` of the prompt tokens at ``positions`` (in order).

    Maps are smoothed (optional), flattened, never re-normalised. ``C_rr = 1``, ``C_rc = cos(map_r, map_c)``
    (eps 1e-8) for ``c < r`` and 0 above the diagonal.
    """
    maps = as_batched(maps)
    check_positions(set(positions), maps.shape[1])
    picked = maps[:, list(positions)]
    if smooth:
        picked = gaussian_smooth(picked, kernel_size, sigma)
    flat = picked.flatten(-2)  # [B, n, HW]
    cos = functional.cosine_similarity(flat.unsqueeze(-2), flat.unsqueeze(-3), dim=-1, eps=1e-8)
    n = flat.shape[1]
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=maps.device), diagonal=-1)
    eye = torch.eye(n, dtype=flat.dtype, device=maps.device)
    return torch.where(lower, cos, torch.zeros_like(cos)) + eye


def row_normalize(similarity: torch.Tensor) -> torch.Tensor:
    """S: rows of C divided by their sums (the paper's normalised similarity)."""
    return similarity / similarity.sum(dim=-1, keepdim=True)


def tsam_code_row_terms(text: torch.Tensor, similarity: torch.Tensor, row_weight: float = 0.2) -> torch.Tensor:
    """Per-row terms ``row_weight * r * (1 - cos(T[r, :r], C[r, :r]))`` for r = 1..n-1: ``[B, n-1]``."""
    n = similarity.shape[-1]
    text = text.to(similarity.dtype).expand_as(similarity)
    rows = []
    for r in range(1, n):
        cos = functional.cosine_similarity(text[..., r, :r], similarity[..., r, :r], dim=-1, eps=1e-8)
        rows.append(row_weight * r * (1.0 - cos))
    if not rows:
        return similarity.new_zeros((*similarity.shape[:-2], 0))
    return torch.stack(rows, dim=-1)


def tsam_paper_row_terms(text: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Per-row terms ``((r+1)/n) * sum_{j<=r} |T_rj - S_rj|`` for r = 1..n-1 (S = row-normalised C)."""
    n = similarity.shape[-1]
    text = text.to(similarity.dtype).expand_as(similarity)
    diff = (text - row_normalize(similarity)).abs()
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=similarity.device))
    per_row = torch.where(lower, diff, torch.zeros_like(diff)).sum(dim=-1)  # [B, n]
    weights = torch.arange(1, n + 1, dtype=similarity.dtype, device=similarity.device) / n
    return (per_row * weights)[..., 1:]


def tsam_loss(
    maps: torch.Tensor,
    text: torch.Tensor,
    positions: Sequence[int],
    *,
    loss_type: str = "code",
    row_weight: float = 0.2,
    smooth: bool = True,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    sigma: float = DEFAULT_SIGMA,
) -> torch.Tensor:
    """T-SAM loss per batch item ``[B]``.

    ``text`` is the prepared T ``[n, n]`` or ``[B, n, n]`` (see :func:`text_attention_matrix`), ``positions``
    the n prompt tokens' columns in ``maps``. ``loss_type="code"``: the reference default
    ``sum_r 0.2 r (1 - cos(T[r,:r], C[r,:r]))``; ``"paper"``: ``sum_r ((r+1)/n) sum_{j<=r} |T_rj - S_rj|``.
    Fewer than two tokens give zeros.
    """
    if loss_type not in TSAM_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {TSAM_LOSS_TYPES}, got {loss_type!r}")
    n = len(positions)
    if text.shape[-1] != n or text.shape[-2] != n:
        raise ValueError(f"text self-attention is {tuple(text.shape)}, expected [.., {n}, {n}] for {n} tokens")
    similarity = cross_attention_similarity(maps, positions, smooth=smooth, kernel_size=kernel_size, sigma=sigma)
    if loss_type == "code":
        terms = tsam_code_row_terms(text, similarity, row_weight)
    else:
        terms = tsam_paper_row_terms(text, similarity)
    return terms.sum(dim=-1)


TSAM_POWER = Bounds(0.0, 10.0, exclusive_minimum=True)
TSAM_ROW_WEIGHT = Bounds(0.0, 10.0)


@dataclass
class TSAMObjective(DecayingSchedule):
    """T-SAM (spec §6). ``loss_type="code"`` (default: step 5, i < 0.6 N) or ``"paper"`` (step 10, i < 0.5 N);
    ``scale_factor`` / ``guided_fraction`` left as ``None`` take the loss type's defaults.

    Refinement runs at every refinement point (no entry test), up to ``refinement_iterations`` (30).
    ``stop_rule="faithful"`` keeps the reference's inverted rule: after ``break_iteration`` (20) updates it
    stops if the loss of the latent before the last update is still above τ(n), otherwise runs on to 30.
    ``"fixed"`` stops as soon as the newest latent's loss is <= τ(n). τ(n) = 0.14 (n - 1) for every n (the
    reference raises ``KeyError`` outside n in {5, 6, 7}).

    ``text_self_attention`` passed to :meth:`loss` is the raw T' averaged over layers and heads, ``[L, L]`` or
    ``[B, L, L]``, in context coordinates: row and column k belong to context column k, the column of the maps
    (CLIP: the first chunk's 77 tokens, SOT at 0; T5: its tokens at their context columns). The prompt tokens are
    the layout's prompt positions inside the matrix (``< L``), so SOT, EOT, ``</s>`` and padding never enter.
    """

    name: ClassVar[str] = "tsam"
    scale_factor: float | None = setting(  # type: ignore[assignment]
        None, "latent step size; none: 5 (`loss_type = code`) or 10 (`paper`)", bounds=STEP_SIZE
    )
    guided_fraction: float | None = setting(  # type: ignore[assignment]
        None, "fraction of the steps that are guided; none: 0.6 (`code`) or 0.5 (`paper`)", bounds=FRACTION
    )
    loss_type: str = setting("code", "the loss as in the reference code or as in the paper", choices=TSAM_LOSS_TYPES)
    power: float = setting(3.0, "exponent k applied to the text self-attention", bounds=TSAM_POWER)
    row_weight: float = setting(0.2, "weight of the row term (`loss_type = code`)", bounds=TSAM_ROW_WEIGHT)
    refinement_iterations: int = setting(
        30, "most refinement iterations at a refinement point", bounds=ITERATIONS,
        hint="use 'refine = false' to switch refinement off",
    )
    break_iteration: int = setting(20, "iteration after which the stop rule applies", bounds=Bounds(0, 1000))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_factor is None:
            self.scale_factor = 5.0 if self.loss_type == "code" else 10.0
        if self.guided_fraction is None:
            self.guided_fraction = 0.6 if self.loss_type == "code" else 0.5

    def loss(self, attn: Mapping[int, AttentionLevel], layout: TokenLayout, step: int, num_steps: int,
             text_self_attention: torch.Tensor | None = None) -> LossResult:
        """T-SAM loss; ``terms["num_tokens"]`` carries n for the refinement threshold."""
        maps = fp32_maps(select_main_level(attn))
        size = None if text_self_attention is None else text_self_attention.shape[-1]
        positions = [p for p in layout.prompt_positions if size is None or p < size]
        n = len(positions)
        n_term = torch.tensor(float(n))
        if n < 2:
            zero = zero_total(maps)
            return LossResult(total=zero, metric=zero.detach(), terms={"num_tokens": n_term})
        if text_self_attention is None:
            raise ValueError("the T-SAM objective needs text_self_attention (the text encoder's self-attention T')")
        raw = text_self_attention.to(device=maps.device, dtype=torch.float32)
        text = text_attention_matrix(raw, positions, power=self.power)
        similarity = cross_attention_similarity(maps, positions, smooth=self.smooth)
        if self.loss_type == "code":
            rows = tsam_code_row_terms(text, similarity, self.row_weight)
        else:
            rows = tsam_paper_row_terms(text, similarity)
        total = rows.sum(dim=-1)
        return LossResult(total=total, metric=total.detach(), terms={"rows": rows.detach(), "num_tokens": n_term})

    def refinement_at(self, phase: int) -> Refinement:
        """Refinement at every refinement point while guided (see the class docstring for the stop rules)."""
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
