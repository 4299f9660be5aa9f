"""Does a positive conditioning come from the prompt that Parse Bindings read? (the bindings' fingerprint)

Parse Bindings encodes its prompt exactly as CLIP Text Encode does and keeps the conditioning rows of every real
prompt token and of the end-of-text token after it, with the context length. A positive entry matches when it is
at least that long and each kept row is within :data:`MAX_ROW_DISTANCE` of the entry's row at the same column
(relative L2 distance, the largest over the rows). The same text encoded by the same CLIP gives distance 0; a CLIP
patched by a LoRA, or a ``(word:1.3)`` weight in one box only, moves the rows a little; another prompt moves at
least one row as far as a different token (figures: ``benchmarks/prompt_fingerprint.py``, docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import BindingGuidanceError

MAX_ROW_DISTANCE = 0.1
"""Largest relative distance ``‖row − kept‖ / ‖kept‖`` at which a conditioning row still counts as the same token."""


@dataclass(frozen=True)
class ConditioningFingerprint:
    """The conditioning rows of a parsed prompt at its token columns, to recognise that prompt's conditioning."""

    positions: tuple[int, ...]
    """Context columns of every real prompt token and of the end-of-text token after the last one."""
    rows: torch.Tensor
    """``[len(positions), width]`` fp32 rows of the prompt's own conditioning at ``positions``."""
    empty_rows: torch.Tensor
    """The same columns of the empty prompt's conditioning (each chunk is encoded alone, so column ``p`` of a
    long prompt pairs with column ``p mod chunk`` of the empty one). ComfyUI's ``(word:w)`` weights move a row
    along the line from its empty-prompt row, so distances are measured from there."""
    context_length: int
    """Columns of the prompt's conditioning (77 per chunk)."""


def fingerprint_of(
    context: torch.Tensor, empty: torch.Tensor, prompt_positions: Sequence[int]
) -> ConditioningFingerprint:
    """Fingerprint of a prompt's conditioning ``context`` ``[1, L, width]``, given the empty prompt's conditioning
    ``empty`` ``[1, chunk, width]`` and the prompt's real token columns."""
    last = max(prompt_positions, default=0)
    positions = tuple(sorted(set(prompt_positions) | {last + 1}))
    chunk = int(empty.shape[1])
    rows = context[0, list(positions)].detach().float().cpu().clone()
    empty_rows = empty[0, [p % chunk for p in positions]].detach().float().cpu().clone()
    return ConditioningFingerprint(positions=positions, rows=rows, empty_rows=empty_rows,
                                   context_length=int(context.shape[1]))


def context_of(entry: Any) -> torch.Tensor | None:
    """The cross-attention context of one positive entry: ``[cond, extras]`` (a node input) or a sampler's dict."""
    if isinstance(entry, dict):
        return entry.get("cross_attn")
    if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], torch.Tensor):
        return entry[0]
    return None


def row_distance(fingerprint: ConditioningFingerprint, context: torch.Tensor | None) -> float:
    """Largest relative distance between the kept rows and ``context``'s rows (``inf`` when shapes cannot match)."""
    if context is None or context.ndim != 3:
        return float("inf")
    if context.shape[1] < fingerprint.context_length or context.shape[2] != fingerprint.rows.shape[1]:
        return float("inf")
    rows = context[0, list(fingerprint.positions)].detach().float().cpu()
    seen = rows - fingerprint.empty_rows
    kept = fingerprint.rows - fingerprint.empty_rows
    scale = (seen * kept).sum(-1, keepdim=True) / (kept * kept).sum(-1, keepdim=True).clamp_min(1e-12)
    residual = seen - scale.clamp_min(0.0) * kept  # what no (word:w) weight explains
    distance = residual.norm(dim=-1) / kept.norm(dim=-1).clamp_min(1e-12)
    return float(distance.max())


def shorten(text: str, limit: int = 60) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def mismatch_message(prompt: str, positive_prompts: Sequence[str], entries: int) -> str:
    """The refusal: both prompts (shortened) and the fix."""
    where = "" if entries == 1 else f" (none of its {entries} entries matches)"
    fix = ("Fix: connect Parse Bindings' 'conditioning' output to 'positive' (the prompt is then typed once), or give "
           "Parse Bindings the same text and the same CLIP as the positive CLIP Text Encode.")
    if positive_prompts and all(" ".join(t.split()) == " ".join(prompt.split()) for t in positive_prompts):
        return (f"positive: Parse Bindings read '{shorten(prompt)}', and the positive has the same text but was "
                f"encoded by another CLIP{where}, e.g. one with a LoRA that Parse Bindings' CLIP lacks. {fix}")
    if positive_prompts:
        seen = "the positive conditioning comes from " + " / ".join(f"'{shorten(t)}'" for t in positive_prompts)
    else:
        seen = "the positive conditioning comes from another prompt or another CLIP"
    return (f"positive: Parse Bindings read '{shorten(prompt)}', but {seen}{where}. Guidance would steer the wrong "
            f"tokens. {fix}")


def matching_entry(fingerprint: ConditioningFingerprint | None, entries: Sequence[Any], prompt: str,
                   positive_prompts: Sequence[str] = ()) -> Any:
    """The positive entry that comes from the parsed prompt (the closest, if several do); raises
    ``BindingGuidanceError`` naming both prompts when none does. Without a fingerprint: the first entry."""
    if not entries:
        raise BindingGuidanceError("positive: the conditioning is empty; connect Parse Bindings' conditioning output.")
    if fingerprint is None:
        return entries[0]
    distances = [row_distance(fingerprint, context_of(entry)) for entry in entries]
    best = min(range(len(entries)), key=distances.__getitem__)
    if distances[best] > MAX_ROW_DISTANCE:
        raise BindingGuidanceError(mismatch_message(prompt, positive_prompts, len(entries)))
    return entries[best]
