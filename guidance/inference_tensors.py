"""Make a model usable for backward passes when ComfyUI created its weights under ``torch.inference_mode``.

ComfyUI runs every node under ``torch.inference_mode()``, so loader nodes create weights as *inference tensors*.
Autograd cannot save those for backward. Re-enabling grad is not enough; the weights themselves must become
ordinary tensors. Each inference parameter or buffer is replaced, one at a time, by a value-identical ordinary
tensor. Peak memory grows by at most one tensor, never by a model copy. Later runs find nothing to replace,
unless ComfyUI reloaded or re-patched the model, in which case only the new tensors are replaced.
"""

from __future__ import annotations

import torch


def release_inference_tensors(module: torch.nn.Module) -> int:
    """Replace every inference-mode parameter and buffer of ``module`` in place. Returns how many were replaced."""
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    replaced += 1
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    sub._buffers[name] = buffer.clone()
                    replaced += 1
    return replaced
