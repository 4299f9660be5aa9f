"""Record cross-attention probabilities from chosen UNet layers during one forward pass.

The recorder knows nothing about losses. It hands out a ``model_options`` dict with ``attn2`` replace patches
for its layers; the caller uses that dict only for the guidance forward. The sampler's normal denoising pass
never sees these patches and keeps ComfyUI's fused attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from comfy.model_patcher import set_model_options_patch_replace

from ..binding_losses.types import AttentionLevel
from .layers import CrossAttentionLayer

AttentionPatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


class RecordingComplete(Exception):  # noqa: N818  (a control-flow signal, not an error)
    """Raised by the last recorded layer to end a guidance forward early; nothing after it needs to run."""


def _spatial_size(extra_options: dict, factor: int, query_length: int) -> tuple[int, int]:
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) >= 4 and int(shape[-2]) * int(shape[-1]) == query_length:
        return int(shape[-2]), int(shape[-1])
    original = extra_options.get("original_shape")
    if original is not None and len(original) >= 4:
        height = math.ceil(int(original[-2]) / factor)
        width = math.ceil(int(original[-1]) / factor)
        if height * width == query_length:
            return height, width
    raise RuntimeError(f"Cannot infer the spatial size of an attention layer with {query_length} query positions.")


def conditional_rows(extra_options: dict, batch: int) -> list[int]:
    """Batch rows of the conditional chunks (``cond_or_uncond`` 0) of a model call of ``batch`` rows."""
    cond_or_uncond = list(extra_options.get("cond_or_uncond") or [0])
    chunk = batch // len(cond_or_uncond)
    rows: list[int] = []
    for index, kind in enumerate(cond_or_uncond):
        if kind == 0:
            rows.extend(range(index * chunk, (index + 1) * chunk))
    return rows


class AttentionRecorder:
    """Accumulates head-averaged cross-attention maps per level (downsampling factor).

    Maps are ``[B, K, H, W]`` in fp32, conditional rows only. Once every recorded layer has run, ``on_complete``
    (if given) is called, and with ``stop_early`` the forward is then ended by :class:`RecordingComplete`.
    """

    def __init__(
        self,
        layers: Sequence[CrossAttentionLayer],
        stop_early: bool = True,
        on_complete: Callable[[], None] | None = None,
    ) -> None:
        if not layers:
            raise ValueError("AttentionRecorder needs at least one layer to record.")
        self.layers = list(layers)
        self.stop_early = stop_early
        self.on_complete = on_complete
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self._layers_seen = 0

    def reset(self) -> None:
        """Forget everything recorded so far (call before each guidance forward)."""
        self._sums.clear()
        self._counts.clear()
        self._layers_seen = 0

    def levels(self) -> dict[int, AttentionLevel]:
        """The recorded maps: factor → plain mean over every (layer, head) map at that factor."""
        return {f: AttentionLevel(mean=self._sums[f] / self._counts[f], count=self._counts[f]) for f in self._sums}

    def model_options_with_patches(self, model_options: dict) -> dict:
        """A copy of ``model_options`` whose ``attn2`` replace patches record this recorder's layers.

        A patch already present for a layer (IPAdapter, attention couple, ...) is kept: it still produces the
        layer's output, and the recorder only reads the probabilities.
        """
        options = {**model_options, "transformer_options": model_options.get("transformer_options", {})}
        existing = options["transformer_options"].get("patches_replace", {}).get("attn2", {})
        for layer in self.layers:
            previous = existing.get(layer.patch_key) or existing.get(layer.block)
            block_name, number, transformer_index = layer.patch_key
            # ComfyUI's helper copies the nested dicts it changes, so the caller's options stay untouched.
            set_model_options_patch_replace(
                options, self._make_patch(layer, previous), "attn2", block_name, number, transformer_index
            )
        return options

    def _record(self, layer: CrossAttentionLayer, probs: torch.Tensor, extra_options: dict) -> None:
        batch, heads, queries, keys = probs.shape
        rows = conditional_rows(extra_options, batch)
        height, width = _spatial_size(extra_options, layer.factor, queries)
        head_sum = probs[rows].sum(dim=1)  # [b, Nq, Nk]
        maps = head_sum.transpose(1, 2).reshape(len(rows), keys, height, width)
        if layer.factor in self._sums:
            self._sums[layer.factor] = self._sums[layer.factor] + maps
            self._counts[layer.factor] += heads
        else:
            self._sums[layer.factor] = maps
            self._counts[layer.factor] = heads

    def _make_patch(self, layer: CrossAttentionLayer, previous: AttentionPatch | None) -> AttentionPatch:
        def record_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> Any:
            heads = int(extra_options.get("n_heads", layer.heads))
            batch, queries, width = q.shape
            head_dim = width // heads
            qh = q.reshape(batch, queries, heads, head_dim).transpose(1, 2).float()
            kh = k.reshape(k.shape[0], k.shape[1], heads, head_dim).transpose(1, 2).float()
            probs = torch.softmax((qh @ kh.transpose(-1, -2)) * head_dim**-0.5, dim=-1)
            self._record(layer, probs, extra_options)
            self._layers_seen += 1
            if self._layers_seen == len(self.layers):
                if self.on_complete is not None:
                    self.on_complete()
                if self.stop_early:
                    raise RecordingComplete
            if previous is not None:
                return previous(q, k, v, extra_options)
            vh = v.reshape(v.shape[0], v.shape[1], heads, head_dim).transpose(1, 2)
            out = probs.to(v.dtype) @ vh
            return out.transpose(1, 2).reshape(batch, queries, heads * head_dim)

        return record_attention
