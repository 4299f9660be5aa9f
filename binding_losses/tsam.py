"""T-SAM losses (spec §6): match cross-attention similarity to the text self-attention structure."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

from ._util import as_batched, check_positions
from .smoothing import DEFAULT_KERNEL_SIZE, DEFAULT_SIGMA, gaussian_smooth

TSAM_LOSS_TYPES = ("code", "paper")


def text_attention_matrix(
    raw: torch.Tensor, eot_index: int | None = None, power: float = 3.0, eps: float = 1e-7
) -> torch.Tensor:
    """T from the raw text self-attention T' (already averaged over layers and heads).

    ``raw`` is ``[..., L, L]`` including SOT (row/column 0) and EOT at ``eot_index`` (default ``L - 1``,
    i.e. ``raw`` is ``[n+2, n+2]``). Slices to the n prompt tokens ``[1:E, 1:E]``, raises to ``power``
    (k = 3) and renormalises rows: ``T_ij = T''_ij^k / (sum_j T''_ij^k + eps)``. Returns ``[..., n, n]``.
    """
    eot = raw.shape[-1] - 1 if eot_index is None else eot_index
    inner = raw[..., 1:eot, 1:eot]
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
