"""Upstream ComfyUI's dynamic-VRAM patcher API on the ComfyUI 0.3.75 that the tests run on.

ComfyUI 0.3.75 has no dynamic VRAM. Upstream's API for it is two methods on ``ModelPatcher``: ``is_dynamic()``, and
``clone(disable_dynamic=True)``, which rebuilds the model with the classic memory manager. The class made here adds
exactly those two methods to the real ``ModelPatcher``, so that the pack's handling of them runs through real
sampling; everything else is ComfyUI's own code.
"""

from __future__ import annotations

from typing import Any


def dynamic_patcher_class() -> type:
    """A ``ModelPatcher`` subclass that reports dynamic VRAM and has upstream's ``clone(disable_dynamic=...)``.

    ``classic_clones`` counts the classic clones made; set ``reload_error`` to make the next one fail with it.
    """
    import comfy.model_patcher

    plain = comfy.model_patcher.ModelPatcher

    class DynamicVramPatcher(plain):
        """A ModelPatcher that reports dynamic VRAM, with upstream's ``clone(disable_dynamic=...)``."""

        classic_clones = 0
        reload_error: Exception | None = None

        def is_dynamic(self) -> bool:
            return True

        def clone(self, disable_dynamic: bool = False) -> Any:
            copy = super().clone()
            if not disable_dynamic:
                return copy
            if DynamicVramPatcher.reload_error is not None:
                raise DynamicVramPatcher.reload_error
            DynamicVramPatcher.classic_clones += 1
            copy.__class__ = plain
            return copy

    return DynamicVramPatcher


def as_dynamic(model_patcher: Any, patcher_class: type) -> Any:
    """A clone of ``model_patcher`` that reports dynamic VRAM (``patcher_class`` from :func:`dynamic_patcher_class`)."""
    dynamic = model_patcher.clone()
    dynamic.__class__ = patcher_class
    return dynamic
