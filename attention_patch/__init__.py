"""Cross-attention capture for UNet models (knows nothing about losses)."""

from .layers import (
    CrossAttentionLayer,
    UnsupportedModelError,
    choose_main_factor,
    layers_at,
    model_family,
    require_unet,
    unet_cross_attention_layers,
)
from .recorder import AttentionRecorder, RecordingComplete

__all__ = [
    "AttentionRecorder",
    "CrossAttentionLayer",
    "RecordingComplete",
    "UnsupportedModelError",
    "choose_main_factor",
    "layers_at",
    "model_family",
    "require_unet",
    "unet_cross_attention_layers",
]
