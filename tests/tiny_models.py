"""Tiny random-weight checkpoints built with ComfyUI's own classes, for CPU tests and the demo.

No weights can be downloaded, so tests use models that ComfyUI's real loaders accept:
- an SD1.x-shaped UNet that ``CheckpointLoaderSimple`` detects as SD15. Detection requires
  ``model_channels=320`` and ``context_dim=768``; the depth is cut to 3 levels with one res block each, so
  cross-attention exists at factors 1, 2 and 4, as in SD1.x;
- the real CLIP-L text encoder shape (fixed by ComfyUI) with random weights, and the real CLIP tokenizer;
- a TAESD VAE.

ComfyUI creates weights uninitialised, which gives NaN, so every tensor is initialised here.
Call :func:`comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

SD15_TINY_UNET = {
    "context_dim": 768,
    "model_channels": 320,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [1, 1, 1],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "image_size": 32,
    "num_heads": 8,
    "num_head_channels": -1,
}


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Deterministically fill every parameter: fan-in scaled normals for weights, norms at 1, biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = math.prod(param.shape[1:])
                values = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
            elif name.endswith("weight"):
                values = torch.ones(param.shape)
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
            param.copy_(values.to(param.dtype))


def build_sd15_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a tiny SD1.x-shaped checkpoint (safetensors, fp16) that CheckpointLoaderSimple accepts."""
    import comfy.sd
    import comfy.supported_models
    import comfy.taesd.taesd
    import comfy.utils

    model_config = comfy.supported_models.SD15(dict(SD15_TINY_UNET))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, seed)

    clip = comfy.sd.CLIP(model_config.clip_target(), tokenizer_data={}, parameters=0)
    init_weights(clip.cond_stage_model, seed + 1)
    # Position and token embeddings with unit scale keep the random text features well conditioned.
    vae = comfy.sd.VAE(sd=_taesd_state_dict(seed + 2))

    state_dict = model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    state_dict = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(state_dict, str(path))
    return path


def _taesd_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD()
    init_weights(taesd, seed)
    return taesd.state_dict()
