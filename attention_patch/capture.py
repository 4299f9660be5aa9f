"""One interface from a model to its attention capture: UNet cross-attention or DiT joint attention.

The sampler asks :func:`capture_for_model` once per run and then only talks to the returned
:class:`AttentionCapture`: which level the losses read, and a fresh recorder for each guidance pass. Families that
neither path serves are refused here, by name, before the first model evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .block_checkpoint import block_patches
from .block_list import parse_block_list
from .joint_attention import JointAttentionRecorder, JointBlock
from .layers import (
    CrossAttentionLayer,
    UnsupportedModelError,
    choose_main_factor,
    layers_at,
    model_family,
    unet_cross_attention_layers,
)
from .recorder import AttentionRecorder

FLUX_FAMILIES = ("Flux", "FluxInpaint", "FluxSchnell")
"""ComfyUI model configs whose diffusion model is Flux.1 (dev, schnell, Fill/Kontext share these configs)."""
CHROMA_FAMILIES = ("Chroma",)
"""Chroma: Flux.1-schnell's double- and single-stream blocks (with modulations from one approximator network), a
T5-only context; ComfyUI labels its blocks as it does Flux's, so the Flux capture serves it unchanged."""
SD3_FAMILIES = ("SD3",)
"""ComfyUI model configs whose diffusion model is SD3's MMDiT (SD3 Medium, SD3.5 Large/Medium)."""
QWEN_IMAGE_FAMILIES = ("QwenImage",)
"""Qwen-Image: 60 MMDiT blocks (separate text and image weights) over [text, image], labelled ``double`` by
ComfyUI, with a Qwen2.5-VL text encoder."""
Z_IMAGE_FAMILIES = ("ZImage",)
"""Z-Image: Lumina 2's NextDiT (single-stream joint blocks over [text, image], each padded to 32 tokens) with a
Qwen3 text encoder."""
CHECKPOINTED_FAMILIES = FLUX_FAMILIES + CHROMA_FAMILIES + SD3_FAMILIES
"""Families whose blocks ``dit_checkpointing`` checkpoints (block_checkpoint.py calls their block modules).
Qwen-Image's block call needs the text mask its forward keeps to itself, and ComfyUI's NextDiT (Z-Image) offers
no block hook, so their guidance backward keeps every block's activations."""


class Recorder(Protocol):
    """What both recorders offer the sampler."""

    def reset(self) -> None: ...
    def levels(self) -> dict: ...
    def model_options_with_patches(self, model_options: dict) -> dict: ...


class AttentionCapture(Protocol):
    """A model family's attention capture, chosen once per sampling run."""

    main_factor: int
    description: str

    def recorder(self, stop_early: bool, on_complete: Callable[[], None] | None = None) -> Recorder:
        """A recorder of this capture's layers or blocks (one per guidance pass or fast-mode call)."""
        ...


@dataclass(frozen=True)
class UNetCapture:
    """Cross-attention (``attn2``) layers of a UNet at the levels the objective reads."""

    layers: tuple[CrossAttentionLayer, ...]
    main_factor: int

    @property
    def description(self) -> str:
        return f"{len(self.layers)} UNet cross-attention layers"

    def recorder(self, stop_early: bool, on_complete: Callable[[], None] | None = None) -> AttentionRecorder:
        return AttentionRecorder(self.layers, stop_early=stop_early, on_complete=on_complete)


@dataclass(frozen=True)
class JointCapture:
    """Image→text attention of chosen joint-attention blocks, pooled to the objective's levels."""

    blocks: tuple[JointBlock, ...]
    main_factor: int
    factors: frozenset[int]
    patch_size: int
    normalization: str
    text_offset: int = 0
    pad_multiple: int = 1
    block_patches: dict = field(default_factory=dict, compare=False)
    """``patches_replace["dit"]`` entries the recorder installs (block checkpointing); empty: none."""

    @property
    def description(self) -> str:
        return f"joint attention of blocks {', '.join(block.label for block in self.blocks)}"

    def recorder(self, stop_early: bool, on_complete: Callable[[], None] | None = None) -> JointAttentionRecorder:
        return JointAttentionRecorder(self.blocks, set(self.factors), self.patch_size, self.normalization,
                                      stop_early=stop_early, on_complete=on_complete, text_offset=self.text_offset,
                                      pad_multiple=self.pad_multiple, block_patches=self.block_patches)


def flux_blocks(diffusion_model: Any) -> list[JointBlock]:
    """Every joint-attention block of a Flux model in execution order: double-stream, then single-stream."""
    heads = int(diffusion_model.num_heads)
    double = [JointBlock("double", i, heads) for i in range(len(diffusion_model.double_blocks))]
    single = [JointBlock("single", i, heads) for i in range(len(diffusion_model.single_blocks))]
    return double + single


def sd3_blocks(diffusion_model: Any) -> list[JointBlock]:
    """Every joint block of SD3's MMDiT, in execution order."""
    heads = int(diffusion_model.num_heads)
    return [JointBlock("joint", i, heads) for i in range(len(diffusion_model.joint_blocks))]


def qwen_image_blocks(diffusion_model: Any) -> list[JointBlock]:
    """Every block of Qwen-Image's transformer, under the ``double`` label ComfyUI gives them."""
    blocks = diffusion_model.transformer_blocks
    heads = int(blocks[0].attn.heads) if len(blocks) else 0
    return [JointBlock("double", i, heads) for i in range(len(blocks))]


def next_dit_blocks(diffusion_model: Any) -> list[JointBlock]:
    """The main joint blocks of Lumina 2's NextDiT (Z-Image), in execution order; the context and noise refiners
    before them attend over text alone and image alone."""
    heads = int(diffusion_model.n_heads)
    return [JointBlock("joint", i, heads) for i in range(len(diffusion_model.layers))]


def default_blocks(blocks: Sequence[JointBlock]) -> list[JointBlock]:
    """Flux, Chroma: the double-stream blocks, where text and image keep their own weights; SD3, Qwen-Image: every
    block (all keep separate weights); Z-Image: every joint block (all share them). See docs/model_families.md."""
    double = [block for block in blocks if block.kind == "double"]
    return double or list(blocks)


def select_blocks(available: Sequence[JointBlock], wanted: Sequence[tuple[str, int]] | None) -> list[JointBlock]:
    """The blocks named in ``wanted`` (``("double", 3)``, ...), or the family default when it is empty."""
    if not wanted:
        return default_blocks(available)
    by_key = {block.key: block for block in available}
    missing = [f"{kind} {index}" for kind, index in wanted if (kind, index) not in by_key]
    if missing:
        kinds = dict.fromkeys(b.kind for b in available)
        counts = {kind: sum(1 for b in available if b.kind == kind) for kind in kinds}
        have = " and ".join(f"{kind} 0-{count - 1}" for kind, count in counts.items())
        raise UnsupportedModelError(
            f"dit_blocks: the model has no block {', '.join(missing)} (it has {have}); name existing blocks, "
            f"e.g. 'dit_blocks = {next(iter(counts))} 0-1'."
        )
    return [by_key[key] for key in dict.fromkeys(wanted)]


GUIDED_FAMILIES = ("UNet models (SD1.x, SD2.x, SDXL) and the joint-attention DiTs Flux.1, Chroma, SD3, Z-Image and "
                   "Qwen-Image")
"""The families :func:`capture_for_model` serves, as the refusal names them."""

REFUSAL_REASONS = {
    "ChromaRadiance": "a pixel-space Chroma (16×16-pixel patches, no VAE latent), where the map levels, which are "
                      "downsampling factors of a VAE latent, mean something else",
    "Lumina2": "Lumina 2's NextDiT, whose attention the Z-Image capture reads, but with a Gemma 2 text encoder (and "
               "CLIPTextEncodeLumina2's system prompt) whose token positions the pack does not read yet",
}
"""Why a family that looks served is not (shown in the refusal); other families get the generic reason."""


def _refuse(family: str, diffusion_model: Any) -> UnsupportedModelError:
    name = type(diffusion_model).__name__
    described = f"{family} (diffusion model {name})" if family != name else name
    reason = REFUSAL_REASONS.get(family, "a transformer (DiT/MMDiT) whose attention it cannot read yet")
    return UnsupportedModelError(
        f"Binding guidance works on {GUIDED_FAMILIES} only; the connected model is {described}, {reason}. "
        "Use a plain KSampler for this model."
    )


def capture_for_model(
    model: Any,
    preferred_factor: int,
    levels_of: Callable[[int], set[int]],
    dit_blocks: str = "",
    joint_normalization: str = "text",
    dit_checkpointing: bool = True,
) -> AttentionCapture:
    """The attention capture for ``model`` (ModelPatcher or BaseModel); refuses unsupported families by name.

    ``levels_of(main_factor)`` is the objective's set of levels. ``dit_blocks`` (the setting's text, e.g.
    ``"double 0-3"``; empty: the family default), ``joint_normalization`` and ``dit_checkpointing`` (checkpoint
    every block the backward runs through before the last recorded one) apply to joint-attention models only.
    """
    base = model if hasattr(model, "diffusion_model") else getattr(model, "model", model)
    family = model_family(base)
    diffusion_model = base.diffusion_model
    if hasattr(diffusion_model, "input_blocks") and hasattr(diffusion_model, "output_blocks"):
        all_layers = unet_cross_attention_layers(diffusion_model, family=family)
        main = choose_main_factor(all_layers, preferred_factor)
        wanted = {f for f in levels_of(main) if f >= 1}
        layers = layers_at(all_layers, wanted)
        if not layers:
            raise UnsupportedModelError(f"The model has no cross-attention layers at factors {sorted(wanted)}.")
        return UNetCapture(tuple(layers), main)
    pad = 1
    if family in FLUX_FAMILIES + CHROMA_FAMILIES and hasattr(diffusion_model, "double_blocks"):
        available, offset = flux_blocks(diffusion_model), 0
    elif family in SD3_FAMILIES and hasattr(diffusion_model, "joint_blocks"):
        available, offset = sd3_blocks(diffusion_model), int(diffusion_model.register_length)
    elif family in QWEN_IMAGE_FAMILIES and hasattr(diffusion_model, "transformer_blocks"):
        available, offset = qwen_image_blocks(diffusion_model), 0
    elif family in Z_IMAGE_FAMILIES and hasattr(diffusion_model, "cap_embedder"):
        available, offset = next_dit_blocks(diffusion_model), 0
        pad = int(diffusion_model.pad_tokens_multiple or 1)
    else:
        raise _refuse(family, diffusion_model)
    patch = int(diffusion_model.patch_size)
    main = max(preferred_factor, patch)
    blocks = select_blocks(available, parse_block_list(dit_blocks))
    factors = frozenset(f for f in levels_of(main) if f >= patch and f % patch == 0)
    patches = {}
    if dit_checkpointing and family in CHECKPOINTED_FAMILIES:
        last = max(available.index(block) for block in blocks)
        patches = block_patches(diffusion_model, available[:last])
    return JointCapture(tuple(blocks), main, factors, patch, joint_normalization, offset, pad, patches)


def require_supported(model: Any) -> None:
    """Refuse, naming the family, a model that neither the UNet nor the joint-attention capture serves."""
    capture_for_model(model, 4, lambda factor: {factor})

