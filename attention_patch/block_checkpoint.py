"""Per-block activation checkpointing of a DiT's guidance pass (Flux.1 and Chroma double/single blocks, SD3 joint
blocks).

The guidance backward runs through every block up to the last recorded one. Without checkpointing, autograd keeps
every activation of those blocks until the backward, and with weights stored in another dtype than the compute dtype
(fp8 or bf16 through ComfyUI's manual cast) also every block's cast weights, which its Linear layers need for the
input gradient. Here each block before the last recorded one runs under ``torch.utils.checkpoint`` (non-reentrant):
only its inputs are kept, and the backward recomputes one block at a time, so one block's activations and cast
weights are alive at once.

The blocks are reached through ComfyUI's ``patches_replace["dit"]`` hooks, which Flux, Chroma and SD3's MMDiT honour
(``capture.CHECKPOINTED_FAMILIES``). A patch calls the block module it was made for (never the model's
``original_block``, whose closure points at the loop's current block by the time the backward recomputes). The
recomputation sees a copy of the forward's ``transformer_options`` (the model moves ``block_index`` on after the
block) with :data:`RECOMPUTING` set, so the attention recorder knows it is a recomputation and records nothing. A
block that another node already patched is left to that patch, unchanged: its state could not be assumed to survive
a second call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .joint_attention import RECOMPUTING, JointBlock, OutOfPlaceResiduals

BlockPatch = Callable[[dict, dict], dict]

DIT_PATCH_KEYS = {"double": "double_block", "single": "single_block", "joint": "double_block"}
"""The recorder's block kind → the key ComfyUI's ``patches_replace["dit"]`` uses for it (SD3's joint blocks are
patched as ``double_block``)."""


def _flux_double(block: torch.nn.Module) -> Callable[[dict, dict], dict]:
    def call(args: dict, options: dict) -> dict:
        img, txt = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                         attn_mask=args.get("attn_mask"), transformer_options=options)
        return {"img": img, "txt": txt}

    return call


def _flux_single(block: torch.nn.Module) -> Callable[[dict, dict], dict]:
    def call(args: dict, options: dict) -> dict:
        img = block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                    transformer_options=options)
        return {"img": img}

    return call


def _sd3_joint(block: torch.nn.Module) -> Callable[[dict, dict], dict]:
    def call(args: dict, options: dict) -> dict:
        txt, img = block(args["txt"], args["img"], c=args["vec"], use_checkpoint=False, transformer_options=options)
        return {"txt": txt, "img": img}

    return call


def _block_call(diffusion_model: Any, block: JointBlock) -> Callable[[dict, dict], dict]:
    if block.kind == "double":
        return _flux_double(diffusion_model.double_blocks[block.index])
    if block.kind == "single":
        return _flux_single(diffusion_model.single_blocks[block.index])
    if block.kind == "joint":
        return _sd3_joint(diffusion_model.joint_blocks[block.index])
    raise ValueError(f"block checkpointing: unknown block kind {block.kind!r}")


def checkpointed(call: Callable[[dict, dict], dict]) -> BlockPatch:
    """A ``patches_replace["dit"]`` patch that runs ``call`` under non-reentrant checkpointing while a graph is
    built, and plainly otherwise."""

    def patch(args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        if not torch.is_grad_enabled():
            return call(args, options)
        forward_options = dict(options)
        recompute_options = {**forward_options, RECOMPUTING: True}
        runs = 0

        def run(inputs: dict) -> dict:
            nonlocal runs
            block_options = forward_options if runs == 0 else recompute_options
            runs += 1
            # Flux adds into its streams in place; a stream outside the graph (the text entering the first block,
            # with frozen weights) stays in place under OutOfPlaceResiduals. The block gets copies, so the inputs
            # its recomputation starts from are the forward's.
            streams = {key: inputs[key].clone() for key in ("img", "txt") if inputs.get(key) is not None}
            # The recomputation runs in the backward, outside the recorder's wrapper: it needs the same
            # out-of-place residual adds as the forward (in place, they would overwrite tensors saved for backward).
            with OutOfPlaceResiduals():
                return call({**inputs, **streams}, block_options)

        return torch.utils.checkpoint.checkpoint(run, dict(args), use_reentrant=False)

    return patch


def block_patches(diffusion_model: Any, blocks: Sequence[JointBlock]) -> dict[tuple[str, int], BlockPatch]:
    """``patches_replace["dit"]`` entries that checkpoint ``blocks`` of ``diffusion_model``."""
    return {(DIT_PATCH_KEYS[block.kind], block.index): checkpointed(_block_call(diffusion_model, block))
            for block in blocks}
