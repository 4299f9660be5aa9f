"""The guided sampler and the objects that configure it (ComfyUI-dependent)."""
