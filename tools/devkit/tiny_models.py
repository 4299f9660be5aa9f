"""Tiny random-weight checkpoints built with ComfyUI's own classes, for CPU tests and the demo.

No weights can be downloaded, so tests use models that ComfyUI's real loaders accept:
- an SD1.x-shaped UNet that ``CheckpointLoaderSimple`` detects as SD15. Detection requires
  ``model_channels=320`` and ``context_dim=768``; the depth is cut to 3 levels with one res block each, so
  cross-attention exists at factors 1, 2 and 4, as in SD1.x;
- the real CLIP-L text encoder shape (fixed by ComfyUI) with random weights, and the real CLIP tokenizer;
- a TAESD VAE.

SD2.x (768-v) and SDXL builders keep each family's real block layout, context width and text encoders, and narrow
only the UNet channels; see ``docs/model_families.md``. :func:`build_tiny_checkpoint` dispatches on
:data:`TINY_ARCHS` (used by the tests' session fixtures and by ``scripts/demo.py --arch``).

ComfyUI creates weights uninitialised, which gives NaN, so every tensor is initialised here.
Call :func:`devkit.comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch

SD15_FULL_UNET = {
    "context_dim": 768,
    "model_channels": 320,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "image_size": 64,
    "num_heads": 8,
    "num_head_channels": -1,
}
"""The real SD1.5 UNet (860 M parameters in the UNet), for the overhead benchmark."""

SD15_TINY_UNET = {
    **copy.deepcopy(SD15_FULL_UNET),
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [1, 1, 1],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1],
    "image_size": 32,
}
"""SD1.5's widths (detection needs ``model_channels=320`` and ``context_dim=768``) cut to 3 levels of one res
block each: cross-attention at factors 1, 2 and 4, as in SD1.x."""


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Deterministically fill every parameter: fan-in scaled normals for weights, norms at 1, biases small.

    The values are drawn on the module's device from a generator seeded with ``seed``, one parameter at a time, so
    a model built on a GPU is filled there without a copy from the CPU."""
    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = math.prod(param.shape[1:])
                values = torch.randn(param.shape, generator=generator, device=device) / math.sqrt(fan_in)
            elif name.endswith("weight"):
                values = torch.ones(param.shape, device=device)
            else:
                values = torch.randn(param.shape, generator=generator, device=device) * 0.02
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


# ---------------------------------------------------------------------------------------------------------------
# SD2.x (768-v) and SDXL.

SD2_TINY_UNET = {
    "context_dim": 1024,
    "model_channels": 320,
    "use_linear_in_transformer": True,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "image_size": 32,
    "num_heads": -1,
    "num_head_channels": 64,
}
"""SD2.x's real block layout (4 levels, 2 res blocks, attention at factors 1, 2, 4) with narrow channels.

``channel_mult=[1, 1, 2, 2]`` instead of ``[1, 2, 4, 4]``: 5 heads at factors 1 and 2, 10 at factor 4, so head
counts still differ per level. The 12 output blocks are needed for ComfyUI's v-prediction test (below).
"""

SD2_VPRED_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
"""``supported_models.SD20.model_type`` picks V_PREDICTION when this LayerNorm bias has std > 0.09 (768-v weights)."""

SDXL_FULL_UNET = {
    "model_channels": 320,
    "use_linear_in_transformer": True,
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "context_dim": 2048,
    "adm_in_channels": 2816,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "image_size": 32,
    "num_heads": -1,
    "num_head_channels": 64,
}
"""The real SDXL UNet (2.57 B parameters), as ComfyUI detects it; used by the memory benchmark."""

SDXL_TINY_UNET = {**copy.deepcopy(SDXL_FULL_UNET), "channel_mult": [1, 1, 1]}
"""SDXL's real block layout and transformer depths (detection matches ``transformer_depth`` exactly) with
``channel_mult=[1, 1, 1]`` instead of ``[1, 2, 4]``: 5 heads × 64 everywhere, about 255 M parameters."""


def _save_checkpoint(model: object, clip: object, vae: object, path: Path) -> Path:
    import comfy.utils

    state_dict = model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)  # type: ignore[attr-defined]
    state_dict = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state_dict.items()}
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(state_dict, str(path))
    return path


def build_sd2_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a tiny SD2.x 768-v checkpoint that CheckpointLoaderSimple detects as ``SD20`` with v-prediction.

    The text encoder is the real OpenCLIP ViT-H text tower shape (ComfyUI's fixed ``sd2_clip_config.json``).
    """
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models

    model_config = comfy.supported_models.SD20(dict(SD2_TINY_UNET))
    model_config.set_inference_dtype(torch.float16, None)  # built in the saved dtype: no conversion copy
    model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    init_weights(model.diffusion_model, seed)
    # Reproduce the statistic ComfyUI reads to tell a 768-v checkpoint from a 512 eps one.
    vpred_bias = model.diffusion_model.get_parameter(SD2_VPRED_KEY)
    with torch.no_grad():
        vpred_bias.copy_(torch.randn(vpred_bias.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)

    clip = comfy.sd.CLIP(model_config.clip_target(), tokenizer_data={}, parameters=0,
                         model_options={"dtype": torch.float16})
    init_weights(clip.cond_stage_model, seed + 1)
    vae = comfy.sd.VAE(sd=_taesd_state_dict(seed + 2))
    return _save_checkpoint(model, clip, vae, path)


def build_sdxl_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a tiny SDXL checkpoint that CheckpointLoaderSimple detects as ``SDXL``.

    Both text encoders keep their real shapes (CLIP-L and OpenCLIP bigG): ComfyUI's checkpoint loader reads
    fixed configs and cannot load a narrowed text encoder.
    """
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(dict(SDXL_TINY_UNET))
    model_config.set_inference_dtype(torch.float16, None)  # built in the saved dtype: no conversion copy
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, seed)

    clip = comfy.sd.CLIP(model_config.clip_target(), tokenizer_data={}, parameters=0,
                         model_options={"dtype": torch.float16})
    init_weights(clip.cond_stage_model, seed + 1)
    vae = comfy.sd.VAE(sd=_taesd_state_dict(seed + 2))
    return _save_checkpoint(model, clip, vae, path)


_BUILDERS = {
    "sd15": build_sd15_tiny_checkpoint,
    "sd2": build_sd2_tiny_checkpoint,
    "sdxl": build_sdxl_tiny_checkpoint,
}
TINY_ARCHS: tuple[str, ...] = tuple(_BUILDERS)
"""The architectures :func:`build_tiny_checkpoint` can build."""


def build_tiny_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """Build the tiny checkpoint for ``arch`` (one of :data:`TINY_ARCHS`) at ``path``."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(TINY_ARCHS)}")
    return _BUILDERS[arch](path, seed=seed)


def cached_tiny_checkpoint(arch: str = "sd15") -> Path:
    """The tiny ``arch`` checkpoint in the tests' model cache (``.cache/test-models``), built there if missing."""
    path = Path(__file__).resolve().parent.parent / ".cache" / "test-models" / f"{arch}_tiny_v1.safetensors"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        build_tiny_checkpoint(arch, tmp)
        tmp.replace(path)
    return path
