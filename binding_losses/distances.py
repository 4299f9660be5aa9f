"""Distances and entropies between attention maps, treated as distributions over pixels."""

from __future__ import annotations

import torch


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def normalize_pixels(maps: torch.Tensor) -> torch.Tensor:
    """Divide each ``[..., H, W]`` map by its sum over pixels and flatten: ``[..., H*W]``."""
    flat = maps.flatten(-2)
    return flat / flat.sum(dim=-1, keepdim=True)


def clamped_log(probs: torch.Tensor) -> torch.Tensor:
    """``log`` of probabilities clamped to ``[eps, 1 - eps]`` (eps = the dtype's machine epsilon)."""
    eps = _eps(probs.dtype)
    return probs.clamp(min=eps, max=1.0 - eps).log()


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, *, infinite_on_zero: bool = False) -> torch.Tensor:
    """SynGen's distance ``0.5 * (KL(P||Q) + KL(Q||P))`` between ``[..., H, W]`` maps.

    Each map is normalised to sum 1 over its pixels inside. Logs use probabilities clamped to
    ``[eps, 1 - eps]``, so exact zeros give a large finite value (the clamp is this port's floor).
    With ``infinite_on_zero=True`` the reference behaviour is reproduced instead: ``+inf`` where one
    map has a zero pixel the other does not. Returns shape ``[...]`` (broadcast of the leading dims).
    """
    pn = normalize_pixels(p)
    qn = normalize_pixels(q)
    log_p = clamped_log(pn)
    log_q = clamped_log(qn)
    kl_pq = pn * (log_p - log_q)
    kl_qp = qn * (log_q - log_p)
    if infinite_on_zero:
        inf = torch.tensor(float("inf"), dtype=kl_pq.dtype, device=kl_pq.device)
        kl_pq = torch.where((qn == 0) & (pn > 0), inf, torch.where(pn == 0, torch.zeros_like(kl_pq), kl_pq))
        kl_qp = torch.where((pn == 0) & (qn > 0), inf, torch.where(qn == 0, torch.zeros_like(kl_qp), kl_qp))
    return 0.5 * (kl_pq.sum(dim=-1) + kl_qp.sum(dim=-1))


def pairwise_symmetric_kl(maps: torch.Tensor) -> torch.Tensor:
    """All-pairs :func:`symmetric_kl` of ``[..., N, H, W]`` maps: ``[..., N, N]`` (one matmul)."""
    probs = normalize_pixels(maps)
    logs = clamped_log(probs)
    self_term = (probs * logs).sum(dim=-1)  # sum_a P_k log P_k
    cross = probs @ logs.transpose(-1, -2)  # [k, l] = sum_a P_k log P_l
    kl = self_term.unsqueeze(-1) - cross  # KL(P_k || P_l)
    return 0.5 * (kl + kl.transpose(-1, -2))


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``[..., H, W]`` maps normalised over pixels, with the SynGen clamp in the log."""
    probs = normalize_pixels(maps)
    return -(probs * clamped_log(probs)).sum(dim=-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """``sum p * (log p - log q)`` over ``dims`` on the given (not renormalised) values; ``0 log 0 := 0``."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=dims)


def jsd(p: torch.Tensor, q: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Jensen-Shannon divergence ``0.5 KL(p||m) + 0.5 KL(q||m)``, ``m = (p + q) / 2``, natural log.

    Evaluated on the values as given (D&B does not renormalise after thresholding), reduced over ``dims``
    (default: the last two, i.e. ``[..., H, W]`` maps; pass ``dims=(-1,)`` for vectors).
    """
    m = 0.5 * (p + q)
    return 0.5 * (kl_divergence(p, m, dims) + kl_divergence(q, m, dims))
