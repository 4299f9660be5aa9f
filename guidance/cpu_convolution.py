"""Convolution kernels for the guidance pass's own work on CPU, chosen per shape by timing.

On CPU, PyTorch runs ``conv2d`` through oneDNN. ComfyUI's plain passes use a batch of two latents (cond and
uncond); the guidance pass runs the conditional latent alone and also needs the input gradient. For that batch of
one, oneDNN's 3×3 kernels on the deep, low-resolution UNet layers (1280 to 2560 channels at 8×8 or 4×4) measured
2–4× slower, forward and backward, than PyTorch's own im2col kernel on a 2-core VM, while oneDNN wins on the wide
high-resolution layers. Which one wins depends on the CPU and its thread count, so :func:`faster_kernels` times both
once per convolution shape, forward and input gradient separately, and the faster one runs. Both compute the same
convolution; results differ by float rounding only.

What is routed is the work that exists only because of guidance: convolutions whose input requires grad, under
grad mode, on CPU, with weights that need no gradient. That is the faithful guidance pass and every backward, and
in fast mode the part of the conditional batch-of-one forward that builds the graph. Fast mode also splits the
step's cond+uncond batch in two batches of one (a plain step runs them as one batch); with
``forwards_without_graph`` the forward-only convolutions of those two halves are routed too, timed forward only.
ComfyUI's own passes keep PyTorch's kernel. A routed convolution also keeps less for the backward: its weight, not
its input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger("binding_guidance")

CPU_CONVOLUTION_CHOICES = ("auto", "default", "native")
"""``auto``: time oneDNN against PyTorch's native kernel per shape and use the faster; ``default``: PyTorch's choice
(oneDNN), as in ComfyUI's own passes; ``native``: always PyTorch's native kernel."""

_NATIVE_MARGIN = 0.75
"""The native kernel is taken only when it is at least 25 % faster. The shapes that matter differ by 2–4× (measured
on a 2-core VM); near-ties would flip with timing noise from one ComfyUI start to the next, and each flip changes
the results at float-rounding level."""


@dataclass(frozen=True)
class Kernels:
    """The kernel of a convolution's forward and of its input-gradient backward: True is oneDNN, False PyTorch's
    native kernel."""

    forward: bool
    backward: bool


@dataclass(frozen=True)
class ConvolutionParams:
    """``conv2d``'s arguments besides input, weight and bias, normalised to pairs."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


# (shapes, conv parameters, dtype, threads) → the faster kernels. One per process, like cudnn.benchmark's.
_CHOICES: dict[tuple, Kernels] = {}
# The same key → whether oneDNN runs the forward, for shapes only ever run without a graph (timed forward only).
_FORWARD_CHOICES: dict[tuple, bool] = {}
_tuning = {"seconds": 0.0}


def tuning_seconds() -> float:
    """Wall time this process has spent timing kernels so far (it is spent once per convolution shape)."""
    return _tuning["seconds"]


def native_share() -> str:
    """How many timed shapes run a direction on the native kernel, as "native for N of M shapes"."""
    native = sum(1 for kernels in _CHOICES.values() if False in (kernels.forward, kernels.backward))
    native += sum(1 for onednn in _FORWARD_CHOICES.values() if not onednn)
    return f"native for {native} of {len(_CHOICES) + len(_FORWARD_CHOICES)} shapes"


def onednn_available() -> bool:
    """Whether this PyTorch build can run convolutions through oneDNN (otherwise there is nothing to choose)."""
    return bool(torch.backends.mkldnn.is_available())


@contextmanager
def _onednn(enabled: bool):
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class _KernelConvolution(torch.autograd.Function):
    """``conv2d`` with the kernels of its forward and of its input-gradient backward fixed."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        params: ConvolutionParams,
        kernels: Kernels,
    ) -> torch.Tensor:
        with _onednn(kernels.forward):
            output = torch.nn.functional.conv2d(
                x, weight, bias, params.stride, params.padding, params.dilation, params.groups
            )
        ctx.save_for_backward(weight)
        ctx.input_shape = x.shape
        ctx.params = params
        ctx.backward_onednn = kernels.backward
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        params: ConvolutionParams = ctx.params
        with _onednn(ctx.backward_onednn):
            grad_input = torch.nn.grad.conv2d_input(
                ctx.input_shape,
                weight,
                grad_output.contiguous(),
                params.stride,
                params.padding,
                params.dilation,
                params.groups,
            )
        return grad_input, None, None, None, None


def _pair(value: int | Sequence[int]) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def kernel_convolution(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams, kernels: Kernels
) -> torch.Tensor:
    """``conv2d(x, weight, bias, ...)`` on the given ``kernels``, differentiable with respect to ``x`` only."""
    return _KernelConvolution.apply(x, weight, bias, params, kernels)


def _seconds_per_direction(
    use_onednn: bool,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    params: ConvolutionParams,
    backward: bool = True,
) -> tuple[float, ...]:
    """Seconds of one forward on one kernel, and with ``backward`` of its input-gradient backward."""
    kernels = Kernels(use_onednn, use_onednn)
    probe = x.detach().clone().requires_grad_(True) if backward else x

    def one_pass() -> tuple[float, ...]:
        started = time.perf_counter()
        with torch.enable_grad() if backward else torch.no_grad():
            output = kernel_convolution(probe, weight, bias, params, kernels)
        middle = time.perf_counter()
        if not backward:
            return (middle - started,)
        torch.autograd.grad(output, probe, torch.ones_like(output))
        return middle - started, time.perf_counter() - middle

    if use_onednn:
        one_pass()  # oneDNN builds and caches a primitive on the first call of a shape; the native kernel has none
    return one_pass()


def _shape_key(x: torch.Tensor, weight: torch.Tensor, params: ConvolutionParams) -> tuple:
    return (tuple(x.shape), tuple(weight.shape), params, x.dtype, torch.get_num_threads())


def _time_kernels(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams, backward: bool
) -> list[bool]:
    """Per timed direction (forward, then with ``backward`` the input gradient): True to run it on oneDNN, False
    when the native kernel was at least ``1 - _NATIVE_MARGIN`` faster."""
    started = time.perf_counter()
    onednn = _seconds_per_direction(True, x, weight, bias, params, backward)
    try:
        native = _seconds_per_direction(False, x, weight, bias, params, backward)
    except RuntimeError:  # a dtype or layout the native kernel lacks in some build: never fail mid-sample
        native = tuple(float("inf") for _ in onednn)
    choice = [not n < _NATIVE_MARGIN * o for o, n in zip(onednn, native, strict=True)]
    _tuning["seconds"] += time.perf_counter() - started
    log.debug(
        "Binding guidance: conv %s×%s %s: oneDNN %s ms, native %s ms (%s) → oneDNN %s",
        tuple(x.shape),
        tuple(weight.shape),
        params,
        " / ".join(f"{seconds * 1e3:.1f}" for seconds in onednn),
        " / ".join(f"{seconds * 1e3:.1f}" for seconds in native),
        "forward / backward" if backward else "forward only",
        choice,
    )
    return choice


def faster_kernels(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams
) -> Kernels:
    """The faster kernel for this convolution's forward and for its input gradient, timed once per shape."""
    key = _shape_key(x, weight, params)
    if key not in _CHOICES:
        _CHOICES[key] = Kernels(*_time_kernels(x, weight, bias, params, backward=True))
    return _CHOICES[key]


def faster_forward_kernel(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams
) -> bool:
    """Whether oneDNN is the faster kernel for this convolution's forward (True) or the native one (False).

    A shape already timed with its backward keeps that forward choice; others are timed forward only, once.
    """
    key = _shape_key(x, weight, params)
    if key in _CHOICES:
        return _CHOICES[key].forward
    if key not in _FORWARD_CHOICES:
        (_FORWARD_CHOICES[key],) = _time_kernels(x, weight, bias, params, backward=False)
    return _FORWARD_CHOICES[key]


class GuidanceConvolutions(TorchFunctionMode):
    """While active, CPU convolutions that build a graph for the input gradient run on the faster kernels.

    ``force``: None times both kernels per shape; True or False fixes oneDNN or the native kernel.
    ``forwards_without_graph``: route convolutions that build no graph as well (their forward only); for the
    batch-of-one halves of a CFG batch that fast mode splits.
    """

    def __init__(self, force: bool | None = None, forwards_without_graph: bool = False) -> None:
        super().__init__()
        self.force = force
        self.forwards_without_graph = forwards_without_graph
        self.routed = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            routed = self._route(*args, **kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)

    def _route(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> torch.Tensor | None:
        if not (x.device.type == "cpu" and x.ndim == 4):
            return None
        pairs = (_pair(stride), _pair(padding), _pair(dilation))
        if any(pair is None for pair in pairs) or not isinstance(groups, int):
            return None  # e.g. padding="same": leave it to PyTorch
        params = ConvolutionParams(*pairs, groups)  # type: ignore[arg-type]
        weights_need_grad = weight.requires_grad or (bias is not None and bias.requires_grad)
        if torch.is_grad_enabled() and (x.requires_grad or weights_need_grad):
            if not x.requires_grad or weights_need_grad or weight.is_inference():
                return None  # weight gradients, or weights autograd may not save: PyTorch's own path decides
            if self.force is None:
                kernels = faster_kernels(x, weight, bias, params)
            else:
                kernels = Kernels(self.force, self.force)
            self.routed += 1
            return kernel_convolution(x, weight, bias, params, kernels)
        if not self.forwards_without_graph:
            return None
        onednn = self.force if self.force is not None else faster_forward_kernel(x, weight, bias, params)
        self.routed += 1
        with _onednn(onednn):
            return torch.nn.functional.conv2d(x, weight, bias, *pairs, groups)


@contextmanager
def guidance_convolutions(choice: str, device: torch.device, forwards_without_graph: bool = False):
    """The convolution routing of a guidance pass for ``choice`` (see ``CPU_CONVOLUTION_CHOICES``) on ``device``;
    a no-op off CPU, with ``choice="default"``, or without oneDNN. ``forwards_without_graph``: see
    :class:`GuidanceConvolutions`."""
    if choice not in CPU_CONVOLUTION_CHOICES:
        raise ValueError(f"cpu_convolution must be one of {', '.join(CPU_CONVOLUTION_CHOICES)}, got {choice!r}")
    if choice == "default" or device.type != "cpu" or not onednn_available():
        yield None
        return
    before = tuning_seconds()
    try:
        mode = GuidanceConvolutions(
            force=False if choice == "native" else None, forwards_without_graph=forwards_without_graph
        )
        with mode:
            yield mode
    finally:
        if tuning_seconds() > before:
            log.info(
                "Binding guidance: timed the CPU convolution kernels of new shapes in %.1f s (once per shape; %s so "
                "far). Set 'cpu_convolution = default' in Binding Loss Config's advanced to skip this.",
                tuning_seconds() - before,
                native_share(),
            )
