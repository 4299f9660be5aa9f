"""How the model must be loaded for guidance: classic ComfyUI loading, one device.

Upstream ComfyUI (after 0.8) loads models with "dynamic VRAM" by default on NVIDIA and AMD GPUs: weights stay in
CPU memory and every forward casts them into GPU buffers that are reused or evicted as soon as the layer has run.
Guidance keeps a graph from its forward to its backward, and that graph holds the weights it multiplied with. Under
dynamic VRAM those may be inference tensors (cached by an earlier plain forward) or buffers that are overwritten
before the backward runs, so the pass would fail, or give a wrong gradient without an error. Guidance therefore runs
on a classically loaded model, as ComfyUI's own TorchCompileModel node does: ``clone(disable_dynamic=True)`` rebuilds
the model with the classic memory manager, keeping its patches (LoRAs) and options.

ComfyUI's multi-GPU option splits a step's conditionings across GPUs in worker threads that run without gradients;
the guidance pass always runs on the model's own device.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import BindingGuidanceError

log = logging.getLogger("binding_guidance")

_DISABLE_FLAG = "--disable-dynamic-vram"


def is_dynamic(model_patcher: Any) -> bool:
    """Whether ``model_patcher`` uses ComfyUI's dynamic VRAM (always False on ComfyUI versions without it)."""
    check = getattr(model_patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


_CLASSIC_COPY = "_binding_guidance_classic_copy"
"""Attribute of a dynamic-VRAM patcher that holds its classic copy, so that the copy lives exactly as long as it."""


def classic_model(model_patcher: Any) -> Any:
    """``model_patcher`` itself, or for a dynamic-VRAM model, a classically loaded clone of it.

    Raises :class:`BindingGuidanceError` (naming the launch flag to use) when ComfyUI cannot build that clone.
    """
    if not is_dynamic(model_patcher):
        return model_patcher
    cached = getattr(model_patcher, _CLASSIC_COPY, None)
    if cached is not None:  # re-running a workflow: no second reload
        return cached
    try:
        copy = model_patcher.clone(disable_dynamic=True)
    except (TypeError, RuntimeError) as error:
        raise BindingGuidanceError(
            f"model: binding guidance needs gradients through the UNet, which ComfyUI's dynamic VRAM loading does "
            f"not keep, and this model cannot be reloaded without it ({error}). Start ComfyUI with {_DISABLE_FLAG}."
        ) from error
    if is_dynamic(copy):
        raise BindingGuidanceError(
            f"model: ComfyUI returned a dynamic-VRAM model where a classic one was asked for. Start ComfyUI with "
            f"{_DISABLE_FLAG}."
        )
    log.info("Binding guidance: the model uses dynamic VRAM; guiding a classically loaded copy of it.")
    setattr(model_patcher, _CLASSIC_COPY, copy)
    return copy


def require_classic(model_patcher: Any) -> None:
    """Refuse a dynamic-VRAM model where the pack cannot swap it (a SAMPLER inside SamplerCustom)."""
    if is_dynamic(model_patcher):
        raise BindingGuidanceError(
            "model: this model is loaded with ComfyUI's dynamic VRAM, which keeps no weights for the gradient that "
            "binding guidance takes. Use the Binding-Guided KSampler node (it switches the model to classic loading "
            f"by itself), or start ComfyUI with {_DISABLE_FLAG}."
        )


def single_device(model_options: dict) -> dict:
    """``model_options`` for a model call that must run on the model's own device, with gradients."""
    if "multigpu_clones" not in model_options:
        return model_options
    options = dict(model_options)
    del options["multigpu_clones"]
    return options
