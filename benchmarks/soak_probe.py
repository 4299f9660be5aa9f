"""A ComfyUI output node for ``benchmarks/soak.py`` (not part of the pack): reports a LATENT or IMAGE's shape, how
many of its elements are not finite, and a SHA-256 of its float32 bytes, in the job's history outputs.

soak.py copies this file into the test server's ``custom_nodes/`` folder, next to the pack.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


class SoakProbe:
    """Observe one LATENT or IMAGE output of a soak job."""

    CATEGORY = "testing"
    FUNCTION = "probe"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        return {"required": {"label": ("STRING", {"default": ""})},
                "optional": {"latent": ("LATENT",), "image": ("IMAGE",)}}

    def probe(self, label: str, latent: dict | None = None, image: torch.Tensor | None = None) -> dict[str, Any]:
        tensor = latent["samples"] if latent is not None else image
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        report = {"label": label, "shape": list(values.shape), "nonfinite": int((~torch.isfinite(values)).sum()),
                  "sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest()}
        return {"ui": {"soak": [report]}}


NODE_CLASS_MAPPINGS = {"SoakProbe": SoakProbe}
