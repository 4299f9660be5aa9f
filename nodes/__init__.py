"""ComfyUI node classes (thin glue over the pack's libraries)."""

from .config_node import BindingGuidanceOptions, BindingLossConfig
from .parse_node import ParseBindings
from .sampler_nodes import BindingGuidedKSampler, BindingGuidedSamplerNode

NODE_CLASS_MAPPINGS = {
    "ParseBindings": ParseBindings,
    "BindingLossConfig": BindingLossConfig,
    "BindingGuidanceOptions": BindingGuidanceOptions,
    "BindingGuidedKSampler": BindingGuidedKSampler,
    "BindingGuidedSampler": BindingGuidedSamplerNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ParseBindings": "Parse Bindings",
    "BindingLossConfig": "Binding Loss Config",
    "BindingGuidanceOptions": "Binding Guidance Options",
    "BindingGuidedKSampler": "Binding-Guided KSampler",
    "BindingGuidedSampler": "Binding-Guided Sampler",
}
