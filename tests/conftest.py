"""Test bootstrap.

Two ways the pack is imported in tests:

* Pure modules (``parsers``, ``binding_losses``, ``tokens``) are imported as the
  package ``binding_guidance`` *without* running the pack's root ``__init__``
  (which imports ComfyUI). The pack root itself is never put on ``sys.path``.
* Integration tests load the pack through ComfyUI's real custom-node loader; see
  ``tools/devkit/comfy_env.py``. ``pytest.ini`` puts this clone's ``tools/`` first on the path, so the tests
  use their own clone's helpers even when the venv's editable ``devkit`` install points at another clone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devkit.comfy_env import PACK_ROOT, register_pack_package

SHARED_DIR = PACK_ROOT.parent / "shared"


register_pack_package()


# ---------------------------------------------------------------------------------------------------------------
# No silent skips in CI: `.ci/run` sets CI=true, and there a skipped test fails with its skip reason (a missing
# Chromium, missing ../shared data, a missing spaCy model...). Only tests marked `gpu` may skip in CI.

import os  # noqa: E402

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where only tests marked 'gpu' may skip: {reason}"


# ---------------------------------------------------------------------------------------------------------------
# Real-ComfyUI fixtures (only tests that ask for them import ComfyUI).

import asyncio  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

TEST_CACHE = PACK_ROOT / ".cache" / "test-models"


@dataclass
class ComfyHarness:
    """ComfyUI with the pack loaded through its real custom-node loader."""

    nodes: Any
    pack: Any
    output_dir: Path

    def module(self, name: str) -> Any:
        """A pack submodule as ComfyUI loaded it, e.g. ``module("guidance.sampler")``."""
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.{name}")

    def node(self, name: str) -> Any:
        """An instance of a registered node class (core or pack)."""
        return self.nodes.NODE_CLASS_MAPPINGS[name]()

    def run_prompt(self, prompt: dict) -> dict:
        """Validate and execute an API-format graph with ComfyUI's executor; returns the history outputs."""
        from devkit.comfy_env import execute_prompt

        try:
            return execute_prompt(prompt, str(uuid.uuid4()))
        except (ValueError, RuntimeError) as error:
            raise AssertionError(str(error)) from error


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> ComfyHarness:
    from devkit.comfy_env import bootstrap_comfy

    bootstrap_comfy()
    import folder_paths
    import nodes

    output_dir = tmp_path_factory.mktemp("comfy-output")
    folder_paths.set_output_directory(str(output_dir))
    folder_paths.add_model_folder_path("checkpoints", str(TEST_CACHE))
    if "CLIPTextEncode" not in nodes.NODE_CLASS_MAPPINGS or "KSamplerSelect" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    assert asyncio.run(nodes.load_custom_node(str(PACK_ROOT), module_parent="custom_nodes")), "pack failed to load"
    pack = sys.modules[str(PACK_ROOT).replace(".", "_x_")]
    ours = {"ParseBindings", "BindingLossConfig", "BindingGuidedKSampler", "BindingGuidedSampler"}
    assert ours <= set(nodes.NODE_CLASS_MAPPINGS)
    return ComfyHarness(nodes=nodes, pack=pack, output_dir=output_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(harness: ComfyHarness) -> str:
    """File name (in the checkpoints folder) of the tiny SD1.x checkpoint, built once and cached."""
    from devkit.tiny_models import build_sd15_tiny_checkpoint

    name = "sd15_tiny_v1.safetensors"
    path = TEST_CACHE / name
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        build_sd15_tiny_checkpoint(tmp)
        tmp.replace(path)
    return name


@pytest.fixture(scope="session")
def sd15(harness: ComfyHarness, tiny_checkpoint: str) -> tuple[Any, Any, Any]:
    """(model, clip, vae) of the tiny checkpoint, loaded by the real CheckpointLoaderSimple under inference mode."""
    import torch

    with torch.inference_mode():
        return harness.node("CheckpointLoaderSimple").load_checkpoint(tiny_checkpoint)[:3]


# ---------------------------------------------------------------------------------------------------------------
# SD2.x (768-v) and SDXL tiny checkpoints. They are built in a child process: the SDXL build peaks at several GB
# (real-shape OpenCLIP bigG text encoder), and that memory goes back to the system before the tests load it.


def _cached_tiny_checkpoint(arch: str, name: str) -> str:
    import subprocess

    path = TEST_CACHE / name
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        code = (
            "import sys; from pathlib import Path; from devkit.comfy_env import bootstrap_comfy; bootstrap_comfy(); "
            "from devkit.tiny_models import build_tiny_checkpoint; "
            "build_tiny_checkpoint(sys.argv[1], Path(sys.argv[2]))"
        )
        # The child imports this clone's devkit, as the tests do (pytest.ini's pythonpath does not reach it).
        path_entries = [str(PACK_ROOT / "tools"), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path_entries))
        subprocess.run([sys.executable, "-c", code, arch, str(tmp)], cwd=Path(__file__).parent, check=True, env=env)
        tmp.replace(path)
    return name


@pytest.fixture(scope="session")
def sd2_checkpoint(harness: ComfyHarness) -> str:
    """File name (in the checkpoints folder) of the tiny SD2.x 768-v checkpoint, built once and cached."""
    return _cached_tiny_checkpoint("sd2", "sd2_tiny_v1.safetensors")


@pytest.fixture(scope="session")
def sdxl_checkpoint(harness: ComfyHarness) -> str:
    """File name (in the checkpoints folder) of the tiny SDXL checkpoint, built once and cached."""
    return _cached_tiny_checkpoint("sdxl", "sdxl_tiny_v1.safetensors")


@pytest.fixture(scope="session")
def sd2(harness: ComfyHarness, sd2_checkpoint: str) -> tuple[Any, Any, Any]:
    """(model, clip, vae) of the tiny SD2.x checkpoint, loaded by the real CheckpointLoaderSimple."""
    import torch

    with torch.inference_mode():
        return harness.node("CheckpointLoaderSimple").load_checkpoint(sd2_checkpoint)[:3]


@pytest.fixture(scope="session")
def sdxl(harness: ComfyHarness, sdxl_checkpoint: str) -> tuple[Any, Any, Any]:
    """(model, clip, vae) of the tiny SDXL checkpoint, loaded by the real CheckpointLoaderSimple."""
    import torch

    with torch.inference_mode():
        return harness.node("CheckpointLoaderSimple").load_checkpoint(sdxl_checkpoint)[:3]
