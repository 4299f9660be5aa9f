"""Record image-query → text-key attention inside the joint attention of Flux-style DiT blocks.

A joint-attention block attends over one sequence that holds the text tokens followed by the image tokens. The
recorder installs an ``optimized_attention_override`` (ComfyUI calls it for every attention call that carries
``transformer_options``) and, for the chosen blocks only, computes the probabilities of the image queries over the
text keys from the conditional rows, in fp32, beside the block's own attention. The block's output is whatever
the attention kernel (or an override that was already installed) returns, so it is unchanged.

An ``APPLY_MODEL`` wrapper reads the latent's size and the context length of each forward: the text occupies
``context_length`` positions of the joint sequence and the image grid follows it (Flux, Chroma: text first in both
double- and single-stream blocks; Qwen-Image: text first; SD3: after its register tokens; Z-Image: text and image
each padded to a multiple of 32 tokens). The same wrapper makes the blocks' in-place residual adds out of place while a
graph is built, so the guidance pass can run a backward through them.

Maps are ``[B, K, h, w]`` at the token grid (``patch_size`` latent pixels per token) and are average-pooled to the
requested levels, so the losses read the same ``AttentionLevel`` they read from a UNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..binding_losses.types import AttentionLevel
from .recorder import RecordingComplete, conditional_rows

JOINT_NORMALIZATIONS = ("text", "joint")
"""How a map is normalised: "text" renormalises the image query's probabilities over the text keys (each map
column sums to 1 over the K text tokens, as a UNet's cross-attention does); "joint" keeps the joint softmax over
text and image keys and reads its text columns (they sum to the share of attention that goes to text)."""

_WRAPPER_KEY = "binding_guidance_joint_geometry"
RECOMPUTING = "binding_guidance_recomputing"
"""Set in the ``transformer_options`` of a block that activation checkpointing recomputes in the backward: the
recorder records nothing there (its maps come from the forward)."""


@dataclass(frozen=True)
class JointBlock:
    """One joint-attention block: ``kind`` is the model's own ``block_type`` ("double", "single")."""

    kind: str
    index: int
    heads: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.index)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.index}"


@dataclass
class _Geometry:
    context_length: int
    grid: tuple[int, int]


def _attention_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, int, Any]:
    """(q, k) as ``[B, heads, L, d]``, the head count and the mask of one ``optimized_attention`` call."""
    q, k, heads = args[0], args[1], int(args[3] if len(args) > 3 else kwargs["heads"])
    if not kwargs.get("skip_reshape", False):
        batch, length, width = q.shape
        q = q.reshape(batch, length, heads, width // heads).transpose(1, 2)
        k = k.reshape(k.shape[0], k.shape[1], heads, width // heads).transpose(1, 2)
    return q, k, heads, kwargs.get("mask")


def _masked(logits: torch.Tensor, mask: Any, queries: slice, keys: slice) -> torch.Tensor:
    if mask is None:
        return logits
    part = mask[..., queries, keys] if mask.ndim >= 2 and mask.shape[-2] > 1 else mask[..., keys]
    while part.ndim < logits.ndim:
        part = part.unsqueeze(1 if part.ndim >= 2 else 0)
    if part.dtype == torch.bool:
        return logits.masked_fill(~part, float("-inf"))
    return logits + part.float()


def text_probabilities(
    q: torch.Tensor, k: torch.Tensor, text: slice, image: slice, normalization: str, mask: Any = None
) -> torch.Tensor:
    """``[B, heads, n_image, n_text]`` fp32 attention of the image queries to the text keys (see
    :data:`JOINT_NORMALIZATIONS`)."""
    scale = q.shape[-1] ** -0.5
    qi = q[:, :, image].float()
    if normalization == "text":
        logits = _masked((qi @ k[:, :, text].float().transpose(-1, -2)) * scale, mask, image, text)
        return torch.softmax(logits, dim=-1)
    if normalization == "joint":
        logits = _masked((qi @ k.float().transpose(-1, -2)) * scale, mask, image, slice(None))
        return torch.softmax(logits, dim=-1)[..., text]
    raise ValueError(f"joint attention normalization must be one of {JOINT_NORMALIZATIONS}, got {normalization!r}")


class OutOfPlaceResiduals(torch.overrides.TorchFunctionMode):
    """Runs ``x += y`` as ``x = x + y`` when ``x`` is part of the graph being built.

    Flux's blocks add their residuals in place (``img += ...``) into tensors that their own norms saved for the
    backward, which autograd refuses. ``x += y`` reaches this mode as ``Tensor.add_`` and rebinds ``x`` to its
    return value, so an out-of-place sum gives the same values. Every ``add_`` in ComfyUI's Flux code is such a
    ``+=``; a bare ``x.add_(y)`` statement on a graph tensor would lose its effect here. Forwards without a graph
    keep the in-place adds.
    """

    _IN_PLACE_ADDS = (torch.Tensor.add_, torch.Tensor.__iadd__)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self._IN_PLACE_ADDS and torch.is_grad_enabled() and getattr(args[0], "requires_grad", False):
            return torch.add(*args, **kwargs)
        return func(*args, **kwargs)


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def with_dit_patches(model_options: dict, patches: dict[tuple[str, int], Callable]) -> dict:
    """A copy of ``model_options`` with ``patches`` added to ``transformer_options["patches_replace"]["dit"]``; a
    block that already has a patch (another node's) keeps it."""
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options", {}))
    if patches:
        replace = dict(transformer_options.get("patches_replace", {}))
        replace["dit"] = {**patches, **replace.get("dit", {})}
        transformer_options["patches_replace"] = replace
    options["transformer_options"] = transformer_options
    return options


def pool_to_factor(maps: torch.Tensor, token_factor: int, factor: int) -> torch.Tensor:
    """Average-pool token-grid maps (``token_factor`` latent pixels per cell) to ``factor`` latent pixels per cell;
    a partial window at an odd edge averages the cells it covers."""
    if factor == token_factor:
        return maps
    size = factor // token_factor
    return torch.nn.functional.avg_pool2d(maps, size, stride=size, ceil_mode=True)


class JointAttentionRecorder:
    """Accumulates head-summed image→text attention of chosen joint blocks; hands out pooled levels.

    Same interface as :class:`AttentionRecorder`: ``reset()``, ``levels()``, ``model_options_with_patches()``,
    ``on_complete`` and ``stop_early`` (raised after the last recorded block's attention).
    """

    def __init__(
        self,
        blocks: Sequence[JointBlock],
        factors: set[int],
        patch_size: int,
        normalization: str = "text",
        stop_early: bool = True,
        on_complete: Callable[[], None] | None = None,
        text_offset: int = 0,
        pad_multiple: int = 1,
        block_patches: dict[tuple[str, int], Callable] | None = None,
    ) -> None:
        if not blocks:
            raise ValueError("JointAttentionRecorder needs at least one block to record.")
        if normalization not in JOINT_NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {JOINT_NORMALIZATIONS}, got {normalization!r}")
        self.blocks = {block.key: block for block in blocks}
        self.factors = {f for f in factors if f >= patch_size and f % patch_size == 0}
        self.patch_size = patch_size
        self.normalization = normalization
        self.stop_early = stop_early
        self.on_complete = on_complete
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._seen: set[tuple[str, int]] = set()
        self._geometry: _Geometry | None = None
        self.text_offset = text_offset
        self.pad_multiple = pad_multiple
        self.block_patches = dict(block_patches or {})
        self._joint_calls = 0

    def reset(self) -> None:
        """Forget everything recorded so far (call before each guidance forward)."""
        self._sum = None
        self._count = 0
        self._seen.clear()

    def levels(self) -> dict[int, AttentionLevel]:
        """Factor → plain mean over every recorded (block, head) map, pooled to that factor."""
        if self._sum is None:
            return {}
        mean = self._sum / self._count
        return {f: AttentionLevel(pool_to_factor(mean, self.patch_size, f), self._count) for f in self.factors}

    def model_options_with_patches(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with this recorder's attention override, geometry wrapper and block patches
        (``patches_replace["dit"]``, e.g. block checkpointing).

        An override that was already there (the guidance pass's SDPA routing, another node's) still computes every
        attention output; the recorder only reads q and k. A block another node already patched keeps its patch.
        """
        options = with_dit_patches(model_options, self.block_patches)
        transformer_options = dict(options.get("transformer_options", {}))
        previous = transformer_options.get("optimized_attention_override")
        transformer_options["optimized_attention_override"] = self._make_override(previous)
        wrappers = {kind: dict(by_key) for kind, by_key in transformer_options.get("wrappers", {}).items()}
        import comfy.patcher_extension

        apply_model = comfy.patcher_extension.WrappersMP.APPLY_MODEL
        wrappers.setdefault(apply_model, {})[_WRAPPER_KEY] = [self._read_geometry]
        transformer_options["wrappers"] = wrappers
        options["transformer_options"] = transformer_options
        return options

    def _read_geometry(self, executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        c_crossattn = args[2] if len(args) > 2 else kwargs.get("c_crossattn")
        if c_crossattn is None:
            raise RuntimeError("Joint-attention capture: the model call has no text context (c_crossattn).")
        p = self.patch_size
        self._geometry = _Geometry(int(c_crossattn.shape[1]), (math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p)))
        self._joint_calls = 0
        with OutOfPlaceResiduals():
            return executor(x, *args, **kwargs)

    def _make_override(self, previous: Callable | None) -> Callable:
        def record_joint_attention(func: Callable, *args: Any, **kwargs: Any) -> Any:
            options = kwargs.get("transformer_options") or {}
            finished = False
            key = None if options.get(RECOMPUTING) else self._block_key(args, kwargs, options)
            if key in self.blocks and key not in self._seen:
                finished = self._record(key, args, kwargs, options)
            if finished:
                if self.on_complete is not None:
                    self.on_complete()
                if self.stop_early:
                    raise RecordingComplete
            if previous is not None:
                return previous(func, *args, **kwargs)
            return func(*args, **kwargs)

        return record_joint_attention

    def _block_key(self, args: tuple, kwargs: dict, options: dict) -> tuple[Any, Any]:
        """The model's own ``(block_type, block_index)`` (Flux, Chroma, Qwen-Image); else ``("joint", n)`` for the n-th
        attention call of this forward over text and image keys together (SD3's MMDiT and Z-Image's NextDiT set no
        block labels; SD3.5's image-only self-attention and NextDiT's text-only and image-only refiner calls have
        fewer keys and are not counted)."""
        if "block_type" in options:
            return (options.get("block_type"), options.get("block_index"))
        geometry = self._geometry
        if geometry is None:
            return (None, None)
        keys = args[1].shape[2] if kwargs.get("skip_reshape", False) else args[1].shape[1]
        if keys < self._segments(geometry)[2]:
            return (None, None)
        self._joint_calls += 1
        return ("joint", self._joint_calls - 1)

    def _segments(self, geometry: _Geometry) -> tuple[slice, slice, int]:
        """The text and image slices of the joint sequence and its length: registers (SD3), the text, then the
        image grid, each padded to a multiple of ``pad_multiple`` with the model's pad tokens (Z-Image: 32)."""
        def padded(length: int) -> int:
            return -(-length // self.pad_multiple) * self.pad_multiple

        text_start = self.text_offset
        image_start = text_start + padded(geometry.context_length)
        cells = geometry.grid[0] * geometry.grid[1]
        text = slice(text_start, text_start + geometry.context_length)
        return text, slice(image_start, image_start + cells), image_start + padded(cells)

    def _record(self, key: tuple[str, int], args: tuple, kwargs: dict, options: dict) -> bool:
        """Record one block's map; True once every chosen block has been recorded."""
        geometry = self._geometry
        if geometry is None:
            raise RuntimeError("Joint-attention capture: the geometry wrapper did not run before the first block.")
        q, k, heads, mask = _attention_inputs(args, kwargs)
        text_length, (height, width) = geometry.context_length, geometry.grid
        text, image, joint_length = self._segments(geometry)
        if k.shape[2] < joint_length:
            raise RuntimeError(
                f"Joint-attention capture: block {key} attends over {k.shape[2]} keys, fewer than the text "
                f"({text_length}) and image ({height}×{width}) tokens; this model does not lay out its sequence "
                "as text then image."
            )
        rows = conditional_rows(options, q.shape[0])
        row_mask = None if mask is None else (mask[rows] if mask.shape[0] == q.shape[0] else mask)

        if mask is None:  # only the image queries and the keys the softmax reads are kept for backward
            parts = (q[:, :, image], k[:, :, text] if self.normalization == "text" else k)
            key_text = slice(0, text_length) if self.normalization == "text" else text
            image_rows = slice(0, height * width)
        else:  # _masked indexes the mask by the full sequence's positions
            parts, key_text, image_rows = (q, k), text, image

        def head_summed_maps(q_part: torch.Tensor, k_part: torch.Tensor) -> torch.Tensor:
            probs = text_probabilities(q_part, k_part, key_text, image_rows, self.normalization, row_mask)
            return probs.sum(dim=1).transpose(1, 2).reshape(len(rows), text_length, height, width)

        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            maps = head_summed_maps(parts[0][rows], parts[1][rows])
        else:
            # The fp32 logits and probabilities ([rows, heads, image, text] each, 100 MB per Flux block at 1024 px)
            # are recomputed in the backward instead of being kept. What the maps keep is saved outside any block
            # checkpoint (identity hooks), so a checkpointed block's recomputation, where the recorder records
            # nothing, saves the same tensors as its forward.
            with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                maps = torch.utils.checkpoint.checkpoint(head_summed_maps, parts[0][rows], parts[1][rows],
                                                         use_reentrant=False)
        self._sum = maps if self._sum is None else self._sum + maps
        self._count += heads
        self._seen.add(key)
        return len(self._seen) == len(self.blocks)
