"""A small random LoRA for a loaded CLIP, in the generic key format ComfyUI's LoraLoader reads.

Every self-attention projection and MLP weight of every text encoder gets a rank-``rank`` update ``up @ down``
whose Frobenius norm is ``relative`` times the weight's own norm. Call :func:`comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PATCHED = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
           "self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


def build_clip_lora(clip: Any, path: Path, relative: float = 0.05, rank: int = 4, seed: int = 0) -> Path:
    """Write a LoRA for ``clip``'s text encoders to ``path`` (safetensors) and return ``path``."""
    import comfy.utils

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, weight in clip.cond_stage_model.state_dict().items():
        if not key.endswith(PATCHED) or weight.ndim != 2:
            continue
        up = torch.randn(weight.shape[0], rank, generator=generator)
        down = torch.randn(rank, weight.shape[1], generator=generator)
        scale = relative * weight.float().norm() / (up @ down).norm()
        name = "text_encoders." + key[: -len(".weight")]
        tensors[f"{name}.lora_up.weight"] = (up * scale.sqrt()).contiguous()
        tensors[f"{name}.lora_down.weight"] = (down * scale.sqrt()).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    if not tensors:
        raise ValueError("the CLIP has no CLIP text-encoder weights to patch")
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(tensors, str(path))
    return path
