"""ComfyUI's VRAM-management paths, reached on a CPU-only machine: dynamic VRAM and partial loading.

- Dynamic VRAM: ComfyUI 0.3.75 has none. Upstream's API for it is two methods on ``ModelPatcher``: ``is_dynamic()``,
  and ``clone(disable_dynamic=True)``, which rebuilds the model with the classic memory manager.
  :func:`dynamic_patcher_class` adds exactly those two methods to the real ``ModelPatcher``, so that the pack's
  handling of them runs through real sampling; everything else is ComfyUI's own code.
- Partial loading: ComfyUI loads a model whose device is the CPU in full (``VRAMState.DISABLED``), whatever the
  launch flags. :func:`partially_unloaded` makes ComfyUI's own ``ModelPatcher.partially_unload`` (what
  ``free_memory`` runs when another model needs room) take part of the model off right after ComfyUI has loaded
  it for a run, so the run's forwards go through the lowvram path: offloaded layers cast their weights layer by
  layer (``comfy_cast_weights``), and weight patches on them are computed on the fly (``LowVramPatch``).
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


def partially_unloaded(model_patcher: Any, fraction: float, seen: list[dict] | None = None) -> Any:
    """A clone of ``model_patcher`` that ComfyUI partially unloads (``fraction`` of its weight memory, 1.0 = all) at
    the start of every run, after loading it (an ``ON_PRE_RUN`` callback). Each run appends to ``seen`` what was
    loaded then: ``loaded`` and ``total`` bytes, ``cast_layers`` (layers cast layer by layer) of ``castable_layers``,
    and ``lowvram_patches`` (weight patches computed on the fly)."""
    import comfy.patcher_extension

    def unload(patcher: Any) -> None:
        patcher.partially_unload(patcher.offload_device, int(patcher.model_size() * fraction))
        if seen is not None:
            castable = [m for m in patcher.model.modules() if hasattr(m, "comfy_cast_weights")]
            seen.append({"loaded": patcher.loaded_size(), "total": patcher.model_size(),
                         "cast_layers": sum(1 for m in castable if m.comfy_cast_weights),
                         "castable_layers": len(castable), "lowvram_patches": patcher.lowvram_patch_counter()})

    clone = model_patcher.clone()
    clone.add_callback(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, unload)
    return clone
