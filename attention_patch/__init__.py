"""Attention capture: UNet cross-attention and DiT joint attention (knows nothing about losses)."""

from .capture import AttentionCapture, JointCapture, UNetCapture, capture_for_model, require_supported
from .joint_attention import JOINT_NORMALIZATIONS, JointAttentionRecorder, JointBlock
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
    "JOINT_NORMALIZATIONS",
    "AttentionCapture",
    "AttentionRecorder",
    "CrossAttentionLayer",
    "JointAttentionRecorder",
    "JointBlock",
    "JointCapture",
    "RecordingComplete",
    "UNetCapture",
    "UnsupportedModelError",
    "capture_for_model",
    "choose_main_factor",
    "layers_at",
    "model_family",
    "require_supported",
    "require_unet",
    "unet_cross_attention_layers",
]
