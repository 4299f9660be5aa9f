"""Tiny random-weight models of the joint-attention families beyond Flux.1 and SD3, built with ComfyUI's classes.

- **Chroma**: ComfyUI's ``comfy.ldm.chroma.model.Chroma`` (Flux's double- and single-stream blocks, modulations
  from the ``distilled_guidance_layer`` approximator) made by ``supported_models.Chroma`` at width 64, and Chroma's
  text encoder (``pixart_t5``: T5-XXL, no padding, the real sentencepiece tokenizer) narrowed by ComfyUI's
  per-encoder config override. Built in memory: ComfyUI's loader recognises a T5-XXL file by its 24th block.
- **Z-Image**: ComfyUI's Lumina 2 ``NextDiT`` with Z-Image's settings (``z_image_modulation``, pad tokens to a
  multiple of 32, time scale 1000, rope θ 256) made by ``supported_models.ZImage`` at width 256 (the narrowest its
  256-wide timestep embedding allows), and Z-Image's text encoder (``z_image``: Qwen3 with the real Qwen
  tokenizer and chat template) narrowed by the per-encoder config override.

Call :func:`comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

from typing import Any

import torch

from devkit.tiny_models import init_weights

TEXT_WIDTH = 64

CHROMA_TINY = {
    "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": TEXT_WIDTH,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
    "in_dim": 64, "out_dim": 64, "hidden_dim": 32, "n_layers": 2,
}
"""Chroma's structure at width 64 (ComfyUI's detection gives in/out 64 = 16 latent channels × 2×2 patch, the
approximator's in_dim 64 and out_dim = hidden size): 2 double- and 2 single-stream blocks, 2 heads × 32."""

CHROMA_TEXT_ENCODER = {"t5xxl_model_config": {"d_model": TEXT_WIDTH, "d_ff": 128, "d_kv": 16, "num_heads": 4,
                                              "num_layers": 2, "num_decoder_layers": 2}}


def _tiny_model(config_name: str, unet_config: dict, seed: int, dtype: torch.dtype) -> Any:
    """A ModelPatcher (CPU) around ``comfy.supported_models.<config_name>(unet_config)``'s model, every weight
    initialised."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, config_name)(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, seed)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _tiny_clip(tokenizer: Any, text_encoder: Any, model_options: dict) -> Any:
    """``comfy.sd.CLIP`` over a ClipTarget, narrowed by ComfyUI's per-encoder config override (not initialised)."""
    import comfy.sd
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(tokenizer, text_encoder)
    return comfy.sd.CLIP(target, parameters=0, model_options=dict(model_options))


def _ones_for_norm_scales(module: torch.nn.Module, suffixes: tuple[str, ...]) -> None:
    """RMSNorm scales at 1, as in trained models (init_weights gives 1-d parameters not named weight ~0.02)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(suffixes):
                param.fill_(1.0)


def tiny_chroma_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ModelPatcher around a tiny Chroma (``model_family`` says ``Chroma``), on the CPU."""
    patcher = _tiny_model("Chroma", CHROMA_TINY, seed, dtype)
    _ones_for_norm_scales(patcher.model.diffusion_model, (".scale",))
    return patcher


def tiny_chroma_clip(seed: int = 1) -> Any:
    """Chroma's text encoder (ComfyUI's ``pixart_t5``: T5 with the real tokenizer, no padding), 64 wide."""
    import comfy.text_encoders.pixart_t5 as pixart_t5

    clip = _tiny_clip(pixart_t5.PixArtTokenizer, pixart_t5.pixart_te(), CHROMA_TEXT_ENCODER)
    init_weights(clip.cond_stage_model, seed)
    return clip


Z_IMAGE_TINY = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": TEXT_WIDTH,
    "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "qk_norm": True,
    "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
}
"""Z-Image's NextDiT as ComfyUI's detection configures it (dim 3840, 30 heads × 128, 30 layers, 2 refiners) at
dim 256: 2 heads × 128, 2 joint layers, 1 context and 1 noise refiner layer."""

TINY_QWEN = {"hidden_size": TEXT_WIDTH, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
             "num_key_value_heads": 1}
"""Qwen3 (Z-Image) and Qwen2.5-VL's language model (Qwen-Image) at width 64, 3 layers; the head width stays 128, a
class constant of ComfyUI's configs."""

Z_IMAGE_TEXT_ENCODER = {"qwen3_4b_model_config": TINY_QWEN}


def tiny_z_image_model(seed: int = 0, dtype: torch.dtype = torch.float32, pad_tokens_multiple: int | None = 32) -> Any:
    """A ModelPatcher around a tiny Z-Image (``model_family`` says ``ZImage``), on the CPU. ComfyUI pads text and
    image to 32 tokens when the checkpoint has pad tokens (``pad_tokens_multiple`` None: a checkpoint without)."""
    return _tiny_model("ZImage", {**Z_IMAGE_TINY, "pad_tokens_multiple": pad_tokens_multiple}, seed, dtype)


def tiny_z_image_clip(seed: int = 1) -> Any:
    """Z-Image's text encoder (ComfyUI's ``z_image``: Qwen3, the real tokenizer and chat template), 64 wide."""
    import comfy.text_encoders.z_image as z_image

    clip = _tiny_clip(z_image.ZImageTokenizer, z_image.te(), Z_IMAGE_TEXT_ENCODER)
    init_weights(clip.cond_stage_model, seed)
    return clip


QWEN_IMAGE_TINY = {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT_WIDTH,
    "axes_dims_rope": (8, 12, 12),
}
"""Qwen-Image's transformer (60 blocks, 24 heads × 128, 16 latent channels in 2×2 patches) at 2 blocks, 2 heads × 32."""

QWEN_IMAGE_TEXT_ENCODER = {"qwen25_7b_model_config": TINY_QWEN}


def tiny_qwen_image_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ModelPatcher around a tiny Qwen-Image (``model_family`` says ``QwenImage``), on the CPU."""
    return _tiny_model("QwenImage", QWEN_IMAGE_TINY, seed, dtype)


def tiny_qwen_image_clip(seed: int = 1) -> Any:
    """Qwen-Image's text encoder (ComfyUI's ``qwen_image``: Qwen2.5-VL, the real tokenizer and template), its
    language model 64 wide. ComfyUI builds the vision tower at full size whatever the config (658 M parameters);
    it runs only for image inputs (Qwen-Image Edit), so it is left as allocated, never initialised or touched."""
    import comfy.text_encoders.qwen_image as qwen_image

    clip = _tiny_clip(qwen_image.QwenImageTokenizer, qwen_image.te(), QWEN_IMAGE_TEXT_ENCODER)
    init_weights(clip.cond_stage_model.qwen25_7b.transformer.model, seed)
    return clip


FAMILY_MODELS = {"chroma": (tiny_chroma_model, tiny_chroma_clip), "z_image": (tiny_z_image_model, tiny_z_image_clip),
                 "qwen_image": (tiny_qwen_image_model, tiny_qwen_image_clip)}
"""Per tiny family: (model builder, CLIP builder)."""
