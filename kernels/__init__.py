"""Compute kernels of the guidance pass: which attention and convolution implementations its graph runs on.

Nothing here knows about losses or attention maps. ``differentiable_attention`` routes attention through PyTorch's
SDPA (it has a backward everywhere); ``cpu_convolution`` can route the guidance pass's CPU convolutions to PyTorch's
native kernel, per shape, by timing.
"""
