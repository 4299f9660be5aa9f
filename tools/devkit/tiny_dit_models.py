"""Tiny random-weight joint-attention DiT models (Flux.1, SD3) built with ComfyUI's own classes, for CPU tests and
the demo.

- The diffusion models are ComfyUI's ``comfy.ldm.flux.model.Flux`` inside ``model_base.Flux`` and the MMDiT inside
  ``model_base.SD3``, made by ``supported_models.Flux``/``SD3`` (the config classes ComfyUI's detection picks) and
  wrapped in a ModelPatcher. They keep the real block structure (Flux: double-stream blocks, then single-stream
  blocks over the concatenated text+image sequence, RoPE, guidance embedding; SD3: joint blocks) at width 64 (Flux)
  and 128 (SD3). The tiny Flux is built in memory: ComfyUI's Flux detection fixes 24 heads × 128 (hidden 3072), so
  a file-loaded Flux has 531 M parameters even at one double and one single block; ``tiny_dit_files`` writes that
  one, and an SD3 checkpoint, for the tests of ComfyUI's own loaders.
- The text encoders are ComfyUI's Flux (CLIP-L for the pooled vector, T5-XXL for the context) and SD3 (CLIP-L, CLIP-G,
  T5-XXL) encoders with the real tokenizers, narrowed by ComfyUI's per-encoder config override
  (``<model_name>_model_config``) and loaded from files by ``comfy.sd.load_clip`` (see ``tiny_dit_files``). Flux's
  context is T5 output, padded to 256 tokens as in ComfyUI.

Call :func:`comfy_env.bootstrap_comfy` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from devkit.tiny_models import init_weights

TEXT_WIDTH = 64
"""Width of both tiny text encoders: the Flux context (T5) and the pooled vector (CLIP-L)."""

FLUX_TINY = {
    "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
    "vec_in_dim": TEXT_WIDTH, "context_in_dim": TEXT_WIDTH, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
    "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2,
    "qkv_bias": True,
}
"""Flux.1-dev's structure (guidance embedding, patch 2, 16 latent channels) at width 64: 2 double-stream and
2 single-stream blocks, 2 heads × 32."""

TINY_TEXT_ENCODERS = {
    "t5xxl_model_config": {"d_model": TEXT_WIDTH, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
                           "num_decoder_layers": 2},
    "clip_l_model_config": {"hidden_size": TEXT_WIDTH, "intermediate_size": 128, "num_attention_heads": 2,
                            "num_hidden_layers": 3, "projection_dim": TEXT_WIDTH},
}
"""ComfyUI's own per-encoder config overrides (``<model_name>_model_config`` in the text encoder's model_options)."""


def _flux_diffusion_model(config: dict, seed: int, dtype: torch.dtype) -> Any:
    """``model_base.Flux`` made by ``supported_models.Flux`` from ``config``, with seeded random weights."""
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, seed)
    with torch.no_grad():  # RMSNorm scales (q/k norms) at 1 as in trained models; init_weights gives 1-d params ~0.02
        for name, param in model.diffusion_model.named_parameters():
            if name.endswith(".scale"):
                param.fill_(1.0)
    return model


def _cpu_patcher(model: Any) -> Any:
    import comfy.model_patcher

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_flux_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ModelPatcher around a tiny Flux.1-dev model (``model_family`` says ``Flux``), on the CPU."""
    return _cpu_patcher(_flux_diffusion_model(FLUX_TINY, seed, dtype))


# ---------------------------------------------------------------------------------------------------------------
# SD3 (MMDiT): CLIP-L‖G chunks then T5 along the context sequence.

SD3_TINY = {
    "in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2, "depth": 2,
    "adm_in_channels": 2 * TEXT_WIDTH, "pos_embed_max_size": 32, "num_patches": 1024,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
}
"""SD3's MMDiT at depth 2 (hidden 64·depth = 128, 2 heads × 64, as ComfyUI derives them): 2 joint blocks, the
last one's text stream pre-only, 16 latent channels, patch 2, a 4096-wide context as SD3's text encoders make."""

SD3_CLIP = {"hidden_size": TEXT_WIDTH, "intermediate_size": 128, "num_attention_heads": 2,
            "projection_dim": TEXT_WIDTH}
"""The width override that SD3's CLIP-L and CLIP-G share; each keeps its real depth (12 and 32 layers)."""

SD3_TEXT_ENCODERS = {
    "clip_l_model_config": SD3_CLIP,
    "clip_g_model_config": SD3_CLIP,
    "t5xxl_model_config": {"d_model": 4096, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1,
                           "num_decoder_layers": 1},
}
"""SD3 pads CLIP-L‖G to 4096 and concatenates T5 along the sequence, so the tiny T5 keeps T5-XXL's 4096 width
(1 layer, 2 heads × 16; its embedding table makes it about 130 M parameters). CLIP-L and CLIP-G get one override
because ComfyUI's loader gives them one (its position-embedding probe sets both from ``model_config``); it tells
them apart by depth (31+ layers is CLIP-G), so each keeps its real depth."""


def _sd3_diffusion_model(seed: int, dtype: torch.dtype) -> Any:
    """``model_base.SD3`` made by ``supported_models.SD3`` from :data:`SD3_TINY`, with seeded random weights."""
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    model_config = comfy.supported_models.SD3(dict(SD3_TINY))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "")
    init_weights(model.diffusion_model, seed)
    with torch.no_grad():  # q/k RMSNorm scales (SD3.5) at 1, as in trained models
        for name, param in model.diffusion_model.named_parameters():
            if name.endswith("_norm.weight") or name.endswith(".scale"):
                param.fill_(1.0)
        # The position embedding is a buffer that checkpoints fill (init_weights fills parameters only): SD3's 2-D
        # sin-cos table, made by ComfyUI's own function.
        embed = model.diffusion_model.pos_embed
        table = get_2d_sincos_pos_embed(embed.shape[-1], SD3_TINY["pos_embed_max_size"])
        embed.copy_(torch.from_numpy(table).reshape(embed.shape).to(embed.dtype))
    return model


def tiny_sd3_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ModelPatcher around a tiny SD3 MMDiT (``model_family`` says ``SD3``), on the CPU."""
    return _cpu_patcher(_sd3_diffusion_model(seed, dtype))


# ---------------------------------------------------------------------------------------------------------------
# Tiny DiT models in a graph: stand-ins for the loader nodes of workflows/syngen_flux.json and syngen_sd35.json
# (tests and demo only).


def tiny_flux_vae(seed: int = 2) -> Any:
    """A random TAESD-shaped VAE for Flux's 16-channel latents (ComfyUI's TAEF1 layout)."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    init_weights(taesd, seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def _loader_node(name: str, kinds: tuple[str, ...], make: Any) -> type:
    def load(self: Any) -> tuple:
        made = make()
        return made if isinstance(made, tuple) else (made,)

    return type(name, (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {}}), "RETURN_TYPES": kinds,
                           "FUNCTION": "load", "CATEGORY": "testing", "load": load})


STAND_INS = {
    "flux": {"UNETLoader": "TinyFluxModelLoader", "DualCLIPLoader": "TinyFluxCLIPLoader",
             "VAELoader": "TinyFluxVAELoader"},
    "sd3": {"CheckpointLoaderSimple": "TinySD3CheckpointLoader", "TripleCLIPLoader": "TinySD3CLIPLoader"},
}
"""Per tiny DiT family: the loader nodes of its workflow and the test nodes that stand in for them."""


def tiny_dit_node_classes(folder: Path) -> dict[str, type]:
    """The stand-in loader node classes by name (``folder`` caches the text encoder files)."""
    from devkit.tiny_dit_files import load_tiny_clip

    makers = {
        "TinyFluxModelLoader": (("MODEL",), tiny_flux_model),
        "TinyFluxCLIPLoader": (("CLIP",), lambda: load_tiny_clip("flux", folder)),
        "TinyFluxVAELoader": (("VAE",), tiny_flux_vae),
        "TinySD3CheckpointLoader": (("MODEL", "CLIP", "VAE"), lambda: (tiny_sd3_model(), load_tiny_clip("sd3", folder),
                                                                       tiny_flux_vae())),
        "TinySD3CLIPLoader": (("CLIP",), lambda: load_tiny_clip("sd3", folder)),
    }
    return {name: _loader_node(name, kinds, make) for name, (kinds, make) in makers.items()}


def register_tiny_dit_nodes(nodes_module: Any, folder: Path) -> None:
    """Add the stand-in loader nodes to ComfyUI's node mappings."""
    nodes_module.NODE_CLASS_MAPPINGS.update(tiny_dit_node_classes(folder))


def dit_arch(prompt: dict) -> str | None:
    """The tiny DiT family whose stand-ins an API prompt needs ("sd3", "flux"), or None for a UNet workflow."""
    kinds = {node["class_type"] for node in prompt.values()}
    if "TripleCLIPLoader" in kinds:
        return "sd3"
    return "flux" if "UNETLoader" in kinds else None


MODEL_LOADER_INPUTS = {"UNETLoader": "unet_name", "CheckpointLoaderSimple": "ckpt_name"}
"""ComfyUI's model loader nodes that can read a tiny DiT file (``tiny_dit_files``), and their file-name input."""


def use_tiny_dit(prompt: dict, size: int = 128, steps: int = 4, model_file: str | None = None) -> dict:
    """A copy of a Flux/SD3 API prompt whose loaders are the tiny stand-ins, at ``size`` px and ``steps`` steps.

    With ``model_file`` (a file in ComfyUI's model folders, from ``tiny_dit_files.cached_dit_file``) the workflow's
    UNETLoader or CheckpointLoaderSimple stays ComfyUI's own node and reads that file."""
    import json

    stand_ins = STAND_INS[dit_arch(prompt) or "flux"]
    patched = json.loads(json.dumps(prompt))
    for node in patched.values():
        if model_file is not None and node["class_type"] in MODEL_LOADER_INPUTS:
            node["inputs"][MODEL_LOADER_INPUTS[node["class_type"]]] = model_file
        elif node["class_type"] in stand_ins:
            node["class_type"] = stand_ins[node["class_type"]]
            node["inputs"] = {}
        elif node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=size, height=size, batch_size=1)
        if "steps" in node["inputs"] and not isinstance(node["inputs"]["steps"], list):
            node["inputs"]["steps"] = steps
    return patched
