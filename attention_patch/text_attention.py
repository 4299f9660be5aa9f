"""CLIP text self-attention for T-SAM, captured in a side pass over the user's own text encoder.

The conditioning ComfyUI produces is not touched: the prompt is encoded once more with forward hooks on the
text encoder's self-attention modules, which recompute ``softmax(q kᵀ/√d + mask)`` from the same inputs, and the
hooks are removed afterwards.
"""

from __future__ import annotations

from typing import Any

import torch

ENCODER_PREFERENCE = ("clip_l", "clip_h", "clip_g")


def _attention_modules(cond_stage_model: torch.nn.Module) -> list[torch.nn.Module]:
    for name in ENCODER_PREFERENCE:
        encoder = getattr(cond_stage_model, name, None)
        if isinstance(encoder, torch.nn.Module):
            modules = [m for m in encoder.modules() if type(m).__name__ == "CLIPAttention"]
            if modules:
                return modules
    return [m for m in cond_stage_model.modules() if type(m).__name__ == "CLIPAttention"]


def clip_text_self_attention(clip: Any, prompt: str) -> torch.Tensor:
    """``[77, 77]`` self-attention of the prompt's first chunk, averaged over layers and heads (causal, fp32, CPU).

    Row and column 0 are SOT; the matrix includes EOT and padding, which the T-SAM loss drops.
    """
    modules = _attention_modules(clip.cond_stage_model)
    if not modules:
        raise RuntimeError("The connected CLIP has no CLIP self-attention layers; T-SAM needs a CLIP text encoder.")
    total: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = args[0]
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        heads = int(module.heads)
        q = module.q_proj(x).float()
        k = module.k_proj(x).float()
        batch, length, width = q.shape
        head_dim = width // heads
        qh = q.reshape(batch, length, heads, head_dim).transpose(1, 2)
        kh = k.reshape(batch, length, heads, head_dim).transpose(1, 2)
        scores = (qh @ kh.transpose(-1, -2)) * head_dim**-0.5
        if mask is not None:
            scores = scores + mask.float()
        total.append(torch.softmax(scores, dim=-1).mean(dim=1)[0].cpu())

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            clip.encode_from_tokens(clip.tokenize(prompt))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(total).mean(dim=0)
