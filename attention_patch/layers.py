"""Find the UNet's cross-attention layers and the spatial level each one works at.

Nothing here is hard-coded to SD1.x: the layers are read from the model's own blocks, so the same code
serves SD1.x, SD2.x and SDXL UNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

BlockKey = tuple[str, int]


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One transformer block's cross-attention (``attn2``) inside a UNet block.

    ``factor`` is the downsampling factor from the latent (1, 2, 4, ...): at a 64×64 latent, factor 4 is 16×16.
    """

    block: BlockKey
    depth_index: int
    factor: int
    heads: int

    @property
    def patch_key(self) -> tuple[str, int, int]:
        """The key ComfyUI's ``patches_replace["attn2"]`` uses for this layer."""
        return (self.block[0], self.block[1], self.depth_index)


class UnsupportedModelError(RuntimeError):
    """The connected model has no UNet cross-attention layers that binding guidance can read."""


def _spatial_transformers(block: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in block.children() if hasattr(m, "transformer_blocks")]


def _attn2_layers(block_key: BlockKey, block: torch.nn.Module, factor: int) -> list[CrossAttentionLayer]:
    layers: list[CrossAttentionLayer] = []
    for transformer in _spatial_transformers(block):
        for depth_index, transformer_block in enumerate(transformer.transformer_blocks):
            attn2 = getattr(transformer_block, "attn2", None)
            if attn2 is None:
                continue
            layers.append(CrossAttentionLayer(block_key, depth_index, factor, int(attn2.heads)))
    return layers


def _contains(block: torch.nn.Module, class_name: str) -> bool:
    return any(type(m).__name__ == class_name for m in block.children())


def model_family(model: Any) -> str:
    """The family ComfyUI detected for ``model`` (a ModelPatcher or a BaseModel): its model config class name.

    E.g. ``SD15``, ``SD20``, ``SDXL``, ``SD3``, ``Flux``; the model class name when there is no config.
    """
    base = model if hasattr(model, "diffusion_model") else getattr(model, "model", model)
    config = getattr(base, "model_config", None)
    return type(config).__name__ if config is not None else type(base).__name__


def unet_cross_attention_layers(
    diffusion_model: torch.nn.Module, family: str | None = None
) -> list[CrossAttentionLayer]:
    """List every ``attn2`` layer of an ldm-style UNet with its downsampling factor, in execution order.

    ``family`` (see :func:`model_family`) names the model in the error raised for non-UNet models.
    """
    input_blocks = getattr(diffusion_model, "input_blocks", None)
    output_blocks = getattr(diffusion_model, "output_blocks", None)
    if input_blocks is None or output_blocks is None:
        name = type(diffusion_model).__name__
        described = f"{family} (diffusion model {name})" if family and family != name else name
        raise UnsupportedModelError(
            f"UNet cross-attention capture works on UNet models (SD1.x, SD2.x, SDXL) only; the connected model is "
            f"{described}, a transformer (DiT/MMDiT) without UNet cross-attention blocks. The joint-attention DiTs "
            "(Flux.1, Chroma, SD3, Z-Image, Qwen-Image) are read by attention_patch.capture_for_model."
        )
    layers: list[CrossAttentionLayer] = []
    factor = 1
    for index, block in enumerate(input_blocks):
        if _contains(block, "Downsample"):
            factor *= 2
        layers += _attn2_layers(("input", index), block, factor)
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        layers += _attn2_layers(("middle", 0), middle, factor)
    for index, block in enumerate(output_blocks):
        layers += _attn2_layers(("output", index), block, factor)
        if _contains(block, "Upsample"):
            factor //= 2
    return layers


def require_unet(model: Any) -> list[CrossAttentionLayer]:
    """The cross-attention layers of ``model`` (ModelPatcher or BaseModel); refuses non-UNet models by family."""
    base = model if hasattr(model, "diffusion_model") else getattr(model, "model", model)
    return unet_cross_attention_layers(base.diffusion_model, family=model_family(base))


def choose_main_factor(layers: list[CrossAttentionLayer], preferred: int = 4) -> int:
    """The level whose maps the losses read: ``preferred`` if the model has it, else the coarsest level below it.

    The middle block is excluded, as in every reference implementation.
    """
    factors = sorted({layer.factor for layer in layers if layer.block[0] != "middle"})
    if not factors:
        raise UnsupportedModelError("The model has no cross-attention layers outside its middle block.")
    if preferred in factors:
        return preferred
    below = [f for f in factors if f < preferred]
    return below[-1] if below else factors[0]


def layers_at(layers: list[CrossAttentionLayer], factors: set[int]) -> list[CrossAttentionLayer]:
    """The non-middle layers at the given factors."""
    return [layer for layer in layers if layer.factor in factors and layer.block[0] != "middle"]
