"""Text self-attention for T-SAM, captured in a side pass over the user's own text encoder.

The conditioning ComfyUI produces is not touched: the prompt is encoded once more with forward hooks on the
encoder's self-attention modules, which recompute the attention probabilities from the same inputs the module
received (fp32), and the hooks are removed afterwards. One small function per encoder gives the probabilities of
one module call; :func:`_layer_head_mean` runs the side pass.

The matrix is in context coordinates: row and column k belong to column k of the conditioning context, so the
T-SAM loss reads it at the same positions as the attention maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

ENCODER_PREFERENCE = ("clip_l", "clip_h", "clip_g")
T5_KEY = "t5xxl"
LLM_KEYS = ("qwen3_4b", "qwen25_7b")
"""The Qwen encoders (Z-Image, Qwen-Image), named as in the tokenizer output and on the text encoder."""

Probabilities = Callable[[torch.nn.Module, tuple, dict, Any], torch.Tensor]
"""``(module, args, kwargs, output) -> [heads, L, L]`` fp32 probabilities of one self-attention call."""


def _modules_of_type(root: torch.nn.Module, type_name: str) -> list[torch.nn.Module]:
    return [m for m in root.modules() if type(m).__name__ == type_name]


def _clip_attention_modules(cond_stage_model: torch.nn.Module) -> list[torch.nn.Module]:
    for name in ENCODER_PREFERENCE:
        encoder = getattr(cond_stage_model, name, None)
        if isinstance(encoder, torch.nn.Module):
            modules = _modules_of_type(encoder, "CLIPAttention")
            if modules:
                return modules
    return _modules_of_type(cond_stage_model, "CLIPAttention")


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, heads·d]`` -> ``[B, heads, L, d]``."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(1, 2)


def _clip_probabilities(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    """ComfyUI's ``CLIPAttention``: ``softmax(q kᵀ/√d + mask)`` (the mask is causal, plus padding if enabled)."""
    x = args[0]
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    heads = int(module.heads)
    q = _heads_first(module.q_proj(x).float(), heads)
    k = _heads_first(module.k_proj(x).float(), heads)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)[0]


def _t5_probabilities(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    """ComfyUI's ``T5Attention``: ``softmax(q kᵀ + position_bias + mask)``, unscaled as in T5 (ComfyUI scales k by
    √d to cancel its attention function's 1/√d). The module returns the relative position bias it used (computed
    in the first layer, passed on to the others) as its second output; the mask arrives as the ``mask`` argument."""
    x = args[0]
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    heads = int(module.num_heads)
    q = _heads_first(module.q(x).float(), heads)
    k = _heads_first(module.k(x).float(), heads)
    scores = q @ k.transpose(-1, -2)
    position_bias = output[1]
    if position_bias is not None:
        scores = scores + position_bias.float()
    if mask is not None:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)[0]


def _llm_probabilities(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    """ComfyUI's LLM ``Attention`` (``comfy.text_encoders.llama``: Qwen3, Qwen2.5-VL): ``softmax(q kᵀ/√d + mask)``
    with q and k after their RMSNorms (Qwen3) and the rotary embedding ComfyUI passed in (``freqs_cis``), the
    key heads repeated for grouped queries; the mask is causal, plus padding if any."""
    from comfy.text_encoders.llama import apply_rope

    x = kwargs["hidden_states"].float()
    batch, length, _ = x.shape
    q = module.q_proj(x).view(batch, length, module.num_heads, module.head_dim).transpose(1, 2)
    k = module.k_proj(x).view(batch, length, module.num_kv_heads, module.head_dim).transpose(1, 2)
    if module.q_norm is not None:
        q, k = module.q_norm(q), module.k_norm(k)
    q, k = apply_rope(q.float(), k.float(), [part.float() for part in kwargs["freqs_cis"]])
    k = k.repeat_interleave(module.num_heads // module.num_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) * module.head_dim ** -0.5
    mask = kwargs.get("attention_mask")
    if mask is not None:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)[0]


def _layer_head_mean(clip: Any, prompt: str, modules: Sequence[torch.nn.Module],
                     probabilities: Probabilities) -> torch.Tensor:
    """Encode ``prompt`` with ``clip`` once more, hooking ``modules``; the mean over layers and heads of the first
    batch row's probabilities, fp32 on the CPU. The hooks only read, and are removed before returning."""
    per_layer: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        per_layer.append(probabilities(module, args, kwargs, output).mean(dim=0).cpu())

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            clip.encode_from_tokens(clip.tokenize(prompt))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(per_layer).mean(dim=0)


def clip_text_self_attention(clip: Any, prompt: str) -> torch.Tensor:
    """``[77, 77]`` CLIP self-attention of the prompt's first chunk, averaged over layers and heads (causal, fp32,
    CPU). Row and column 0 are SOT; the matrix includes EOT and padding (the T-SAM loss reads prompt tokens only).
    """
    modules = _clip_attention_modules(clip.cond_stage_model)
    if not modules:
        raise RuntimeError("The connected CLIP has no CLIP self-attention layers; T-SAM needs a CLIP text encoder.")
    return _layer_head_mean(clip, prompt, modules, _clip_probabilities)


def t5_text_self_attention(clip: Any, prompt: str, context_length: int) -> torch.Tensor:
    """``[context_length, context_length]`` T5 self-attention of the prompt, averaged over layers and heads
    (bidirectional, fp32, CPU), in context coordinates.

    T5 is the last segment of every context that has one (Flux.1: all of it; SD3: after the CLIP-L‖G chunks), so
    its ``L×L`` matrix fills the bottom-right block; the rows and columns before it stay zero (the maps' CLIP
    columns, which the T5 layout does not address). The block includes ``</s>`` and padding.
    """
    encoder = getattr(clip.cond_stage_model, T5_KEY, None)
    modules = _modules_of_type(encoder, "T5Attention") if isinstance(encoder, torch.nn.Module) else []
    if not modules:
        raise RuntimeError("The connected CLIP has no T5 encoder; T-SAM on T5 positions needs the T5-XXL encoder.")
    block = _layer_head_mean(clip, prompt, modules, _t5_probabilities)
    start = context_length - block.shape[-1]
    if start < 0:
        raise RuntimeError(f"The T5 encoder saw {block.shape[-1]} tokens, more than the {context_length} context "
                           "columns of the prompt's token table; re-run Parse Bindings with this CLIP.")
    matrix = block.new_zeros(context_length, context_length)
    matrix[start:, start:] = block
    return matrix


def _in_context(block: torch.Tensor, context_length: int) -> torch.Tensor:
    """An encoder's ``L×L`` matrix in context coordinates: the encoder's tokens are the last segment of the context
    (Flux.1, Chroma, Z-Image: all of it; SD3: after the CLIP chunks, whose rows and columns stay zero), or the
    context is the encoder's last tokens (Qwen-Image drops its template's system turn)."""
    size = block.shape[-1]
    if size >= context_length:
        return block[size - context_length:, size - context_length:].clone()
    matrix = block.new_zeros(context_length, context_length)
    matrix[context_length - size:, context_length - size:] = block
    return matrix


def llm_text_self_attention(clip: Any, prompt: str, encoder: str, context_length: int) -> torch.Tensor:
    """``[context_length, context_length]`` self-attention of a Qwen encoder (Z-Image, Qwen-Image) over the
    templated prompt, averaged over layers and heads (causal, fp32, CPU), in context coordinates."""
    from comfy.text_encoders.llama import Attention

    root = getattr(clip.cond_stage_model, encoder, None)
    modules = [m for m in root.modules() if isinstance(m, Attention)] if isinstance(root, torch.nn.Module) else []
    if not modules:
        raise RuntimeError(f"The connected CLIP has no {encoder} encoder; re-run Parse Bindings with this CLIP.")
    return _in_context(_layer_head_mean(clip, prompt, modules, _llm_probabilities), context_length)


def text_self_attention(clip: Any, prompt: str, encoders: Sequence[str], context_length: int) -> torch.Tensor:
    """T-SAM's text self-attention T' for the encoder that the prompt's positions address: T5 where the token table
    has T5 positions (Flux.1, SD3), else CLIP's first chunk."""
    if T5_KEY in encoders:
        return t5_text_self_attention(clip, prompt, context_length)
    llm = [key for key in encoders if key in LLM_KEYS]
    if llm:
        return llm_text_self_attention(clip, prompt, llm[0], context_length)
    return clip_text_self_attention(clip, prompt)
