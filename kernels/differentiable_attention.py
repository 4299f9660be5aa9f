"""Pick PyTorch's SDPA for the layers the recorder does not patch, during the guidance pass only.

ComfyUI's choice of attention kernel (sub-quadratic on CPU, xformers, sage, flash, ...) is made for inference. Some
of those kernels have no backward, and the chunked CPU default has a slow one. The guidance pass needs gradients,
so it routes every attention call through ``torch.nn.functional.scaled_dot_product_attention``, which has a
backward on every device. The sampler's normal pass keeps ComfyUI's kernel.
"""

from __future__ import annotations

from typing import Any


def _sdpa_override(func: Any, *args: Any, **kwargs: Any) -> Any:
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


def with_differentiable_attention(model_options: dict) -> dict:
    """``model_options`` whose attention calls use SDPA; an override installed by another node is kept."""
    transformer_options = model_options.get("transformer_options", {})
    if "optimized_attention_override" in transformer_options:
        return model_options
    options = dict(model_options)
    options["transformer_options"] = {**transformer_options, "optimized_attention_override": _sdpa_override}
    return options
