"""Tiny Flux.1 and SD3 models and text encoders as files, for ComfyUI's own loaders to read.

- Text encoders: the files a ``text_encoders`` folder holds (Flux: CLIP-L, T5-XXL; SD3: CLIP-L, CLIP-G, T5-XXL),
  read by ``comfy.sd.load_clip``, the function DualCLIPLoader and TripleCLIPLoader call. The loader nodes pass no
  ``model_options``, and without the narrowing override in them ComfyUI builds T5-XXL from its fixed config
  (4.7 B parameters), so the nodes themselves cannot read a tiny T5.
- Flux.1-dev as a diffusion-model file for UNETLoader. ComfyUI's detection fixes 24 heads × 128, the MLP ratio and
  the RoPE axes, and reads the depths and the text and pooled widths from the weights: the smallest Flux it rebuilds
  has hidden size 3072, one double-stream and one single-stream block (531 M parameters), stored here in
  float8_e4m3fn (531 MB). Every tensor is stored in fp8, so the default and fp8 weight dtypes hold equal values.
- SD3 as a checkpoint for CheckpointLoaderSimple: the tiny MMDiT (its depth, width and context width are what
  detection derives from the shapes) and a 16-channel TAESD VAE, without text encoders, as SD3.5 files used with
  TripleCLIPLoader are. UNETLoader reads the diffusion model from the same file.

Each file is written once into a cache folder (through a temporary name, so a half-written file is never read).
Call :func:`devkit.comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from devkit.tiny_dit_models import (
    FLUX_TINY,
    SD3_CLIP,
    SD3_TEXT_ENCODERS,
    TINY_TEXT_ENCODERS,
    _flux_diffusion_model,
    _sd3_diffusion_model,
    tiny_flux_vae,
)
from devkit.tiny_models import init_weights

TEXT_ENCODER_FILES = {
    "flux": {"clip_l.transformer.": "flux_tiny_clip_l.safetensors",
             "t5xxl.transformer.": "flux_tiny_t5xxl.safetensors"},
    "sd3": {"clip_l.transformer.": "sd3_tiny_clip_l.safetensors", "clip_g.transformer.": "sd3_tiny_clip_g.safetensors",
            "t5xxl.transformer.": "sd3_tiny_t5xxl.safetensors"},
}
"""Per family: the text encoder's state-dict prefix of each part, and the file that part is saved to."""

FLUX_FILE_CONFIG = {**FLUX_TINY, "hidden_size": 3072, "num_heads": 24, "axes_dim": [16, 56, 56], "mlp_ratio": 4.0,
                    "depth": 1, "depth_single_blocks": 1}
"""The smallest Flux.1-dev that ComfyUI's detection rebuilds from a file (text and pooled widths stay 64)."""

DIT_FILES = {"flux": "flux1_dev_tiny_fp8_v1.safetensors", "sd3": "sd3_tiny_v1.safetensors"}
"""Per family: the diffusion-model file (Flux, for UNETLoader) or checkpoint (SD3, for either loader)."""


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    import comfy.utils

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def _text_encoder(arch: str, seed: int) -> Any:
    """The narrowed ``arch`` text encoder with seeded random weights, built in memory."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    if arch == "flux":
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                        comfy.text_encoders.flux.flux_clip())
        options = TINY_TEXT_ENCODERS
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer,
                                                        comfy.text_encoders.sd3_clip.sd3_clip(True, True, True))
        options = SD3_TEXT_ENCODERS
    clip = comfy.sd.CLIP(target, parameters=0, model_options=dict(options))
    init_weights(clip.cond_stage_model, seed)
    return clip


def build_text_encoders(arch: str, folder: Path, seed: int = 1) -> list[Path]:
    """Write the tiny ``arch`` ("flux" or "sd3") text encoder files into ``folder``; returns their paths."""
    state = _text_encoder(arch, seed).cond_stage_model.state_dict()
    paths = []
    for prefix, name in TEXT_ENCODER_FILES[arch].items():
        _save({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, folder / name)
        paths.append(folder / name)
    return paths


def loader_options(arch: str) -> dict:
    """``model_options`` for ``comfy.sd.load_clip``: its position-embedding probe rebuilds ``clip_l_model_config``
    and ``clip_g_model_config`` from ``model_config``, so the CLIP override goes there."""
    if arch == "flux":
        return {**TINY_TEXT_ENCODERS, "model_config": dict(TINY_TEXT_ENCODERS["clip_l_model_config"])}
    return {"t5xxl_model_config": SD3_TEXT_ENCODERS["t5xxl_model_config"], "model_config": dict(SD3_CLIP)}


def load_tiny_clip(arch: str, folder: Path) -> Any:
    """The tiny ``arch`` CLIP, read from ``folder`` (written there first if missing) by ``comfy.sd.load_clip``."""
    import comfy.sd

    paths = [folder / name for name in TEXT_ENCODER_FILES[arch].values()]
    if not all(path.exists() for path in paths):
        build_text_encoders(arch, folder)
    clip_type = comfy.sd.CLIPType.FLUX if arch == "flux" else comfy.sd.CLIPType.SD3
    return comfy.sd.load_clip([str(p) for p in paths], clip_type=clip_type, model_options=loader_options(arch))


def build_flux_file(path: Path, seed: int = 0) -> Path:
    """Write the detection-sized Flux.1-dev (:data:`FLUX_FILE_CONFIG`) as a float8_e4m3fn diffusion-model file."""
    model = _flux_diffusion_model(FLUX_FILE_CONFIG, seed, torch.bfloat16)
    state = model.diffusion_model.state_dict()
    del model
    _save({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, path)
    return path


def build_sd3_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the tiny SD3 MMDiT and a TAESD VAE as a checkpoint (``model.diffusion_model.``, ``first_stage_model.``)."""
    model = _sd3_diffusion_model(seed, torch.float32)
    _save(model.state_dict_for_saving(None, tiny_flux_vae().get_sd(), None), path)
    return path


_DIT_BUILDERS = {"flux": build_flux_file, "sd3": build_sd3_checkpoint}


def cached_dit_file(arch: str, folder: Path) -> str:
    """File name, in ``folder``, of the ``arch`` model file (:data:`DIT_FILES`), written there first if missing."""
    path = folder / DIT_FILES[arch]
    if not path.exists():
        _DIT_BUILDERS[arch](path)
    return path.name


def register_model_folder(folder: Path) -> None:
    """Add ``folder`` to ComfyUI's checkpoints, diffusion_models and text_encoders folders (idempotent)."""
    import folder_paths

    for kind in ("checkpoints", "diffusion_models", "text_encoders"):
        if str(folder) not in folder_paths.get_folder_paths(kind):
            folder_paths.add_model_folder_path(kind, str(folder))
