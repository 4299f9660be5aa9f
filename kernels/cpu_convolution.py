"""Convolution kernels for the guidance pass's own work on CPU, optionally chosen per shape by timing.

On CPU, PyTorch runs ``conv2d`` through oneDNN where it can. ComfyUI's plain passes use a batch of two latents
(cond and uncond); the guidance pass runs the conditional latent alone and also needs the input gradient. For that
batch of one, oneDNN can be slower than PyTorch's native im2col kernel on the deep, low-resolution UNet layers and
faster on the wide high-resolution ones; which one wins depends on the CPU and its thread count (figures, and the
command that measures them: README, "Convolution kernels on CPU"). Both compute the same convolution; results
differ by float rounding only.

``cpu_convolution`` choices (see ``CPU_CONVOLUTION_CHOICES``):

- ``default``: PyTorch's own kernel everywhere, as ComfyUI's passes. The same seed gives the same image after a
  restart, which is why it is the default.
- ``native``: PyTorch's native kernel for the routed convolutions. Deterministic too.
- ``auto``: time both kernels once per convolution shape (forward and input gradient separately) and run the faster.
  A near-tie can go either way from one ComfyUI start to the next, changing CPU images at rounding level.

What is routed is the work that exists only because of guidance: convolutions whose input requires grad, under
grad mode, on CPU, with weights that need no gradient. With ``forwards_without_graph`` the forward-only
convolutions are routed too (fast mode's split batch-of-one halves). A routed convolution keeps less for the
backward: its weight, not its input. The native kernel is called directly (``aten._slow_conv2d_*``, what PyTorch
runs with oneDNN switched off), so no process-wide flag is touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger("binding_guidance")

CPU_CONVOLUTION_CHOICES = ("auto", "default", "native")
"""``auto``: time oneDNN against PyTorch's native kernel per shape and use the faster; ``default`` (the default):
PyTorch's choice (oneDNN), as in ComfyUI's own passes; ``native``: always PyTorch's native kernel."""

NATIVE_MARGIN = 0.75
"""With ``auto`` the native kernel is taken only when it is at least 25 % faster: near-ties would flip with timing
noise from one ComfyUI start to the next, and each flip changes the results at float-rounding level."""


@dataclass(frozen=True)
class Kernels:
    """The kernel of a convolution's forward and of its input-gradient backward: True is PyTorch's own choice
    (oneDNN), False PyTorch's native im2col kernel."""

    forward: bool
    backward: bool


@dataclass(frozen=True)
class ConvolutionParams:
    """``conv2d``'s arguments besides input, weight and bias, normalised to pairs."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def onednn_available() -> bool:
    """Whether this PyTorch build can run convolutions through oneDNN (otherwise there is nothing to choose)."""
    return bool(torch.backends.mkldnn.is_available())


def _native_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams
) -> torch.Tensor:
    """PyTorch's native (im2col) convolution, one group at a time, as PyTorch runs it without oneDNN."""
    kernel_size = list(weight.shape[-2:])
    group_in, group_out = x.shape[1] // params.groups, weight.shape[0] // params.groups
    outputs = []
    for g in range(params.groups):
        outputs.append(
            torch.ops.aten._slow_conv2d_forward(
                x[:, g * group_in : (g + 1) * group_in] if params.groups > 1 else x,
                weight[g * group_out : (g + 1) * group_out] if params.groups > 1 else weight,
                kernel_size,
                bias[g * group_out : (g + 1) * group_out] if bias is not None and params.groups > 1 else bias,
                list(params.stride),
                list(params.padding),
            )
        )
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def _native_input_gradient(
    input_shape: torch.Size, weight: torch.Tensor, grad_output: torch.Tensor, params: ConvolutionParams
) -> torch.Tensor:
    """The input gradient on PyTorch's native kernel (it reads only the input's shape, never its values)."""
    kernel_size = list(weight.shape[-2:])
    group_in, group_out = input_shape[1] // params.groups, weight.shape[0] // params.groups
    shape = (input_shape[0], group_in, *input_shape[2:])
    grads = []
    for g in range(params.groups):
        grads.append(
            torch.ops.aten._slow_conv2d_backward(
                grad_output[:, g * group_out : (g + 1) * group_out],
                torch.empty(shape, dtype=grad_output.dtype, device=grad_output.device),
                weight[g * group_out : (g + 1) * group_out].contiguous(),
                kernel_size,
                list(params.stride),
                list(params.padding),
                [True, False, False],
            )[0]
        )
    return grads[0] if len(grads) == 1 else torch.cat(grads, dim=1)


def _forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams, onednn: bool
) -> torch.Tensor:
    if onednn:
        return torch.nn.functional.conv2d(
            x, weight, bias, params.stride, params.padding, params.dilation, params.groups
        )
    return _native_forward(x, weight, bias, params)


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
        output = _forward(x, weight, bias, params, kernels.forward)
        ctx.save_for_backward(weight)
        ctx.input_shape = x.shape
        ctx.params = params
        ctx.backward_onednn = kernels.backward
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        params: ConvolutionParams = ctx.params
        grad_output = grad_output.contiguous()
        if ctx.backward_onednn:
            grad_input = torch.nn.grad.conv2d_input(
                ctx.input_shape, weight, grad_output, params.stride, params.padding, params.dilation, params.groups
            )
        else:
            grad_input = _native_input_gradient(ctx.input_shape, weight, grad_output, params)
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


@dataclass
class KernelTimings:
    """The kernels ``auto`` timed, per convolution shape, and the time spent timing them.

    Whoever owns an instance decides how long its choices live: the guided sampler shares one per process
    (``BindingGuidedSampler.kernel_timings``), like ``cudnn.benchmark``'s cache; a fresh instance times anew.
    """

    with_backward: dict[tuple, Kernels] = field(default_factory=dict)
    """(shapes, conv parameters, dtype, threads) → the faster kernels of the forward and the input gradient."""
    forward_only: dict[tuple, bool] = field(default_factory=dict)
    """The same key → whether oneDNN runs the forward, for shapes only ever run without a graph."""
    seconds: float = 0.0
    """Wall time spent timing kernels so far (once per convolution shape)."""

    def kernels(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams
    ) -> Kernels:
        """The faster kernel for this convolution's forward and for its input gradient, timed once per shape."""
        key = _shape_key(x, weight, params)
        if key not in self.with_backward:
            self.with_backward[key] = Kernels(*self._time(x, weight, bias, params, backward=True))
        return self.with_backward[key]

    def forward_kernel(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: ConvolutionParams
    ) -> bool:
        """Whether oneDNN is the faster kernel for this convolution's forward (True) or the native one (False).

        A shape already timed with its backward keeps that forward choice; others are timed forward only, once.
        """
        key = _shape_key(x, weight, params)
        if key in self.with_backward:
            return self.with_backward[key].forward
        if key not in self.forward_only:
            (self.forward_only[key],) = self._time(x, weight, bias, params, backward=False)
        return self.forward_only[key]

    def native_share(self) -> str:
        """How many timed shapes run a direction on the native kernel, as "native for N of M shapes"."""
        native = sum(1 for kernels in self.with_backward.values() if False in (kernels.forward, kernels.backward))
        native += sum(1 for onednn in self.forward_only.values() if not onednn)
        return f"native for {native} of {len(self.with_backward) + len(self.forward_only)} shapes"

    def _time(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        params: ConvolutionParams,
        backward: bool,
    ) -> list[bool]:
        """Per timed direction (forward, then with ``backward`` the input gradient): True to run it on oneDNN, False
        when the native kernel was at least ``1 - NATIVE_MARGIN`` faster."""
        started = time.perf_counter()
        onednn = _seconds_per_direction(True, x, weight, bias, params, backward)
        try:
            native = _seconds_per_direction(False, x, weight, bias, params, backward)
        except RuntimeError:  # a dtype or layout the native kernel lacks in some build: never fail mid-sample
            native = tuple(float("inf") for _ in onednn)
        choice = [not n < NATIVE_MARGIN * o for o, n in zip(onednn, native, strict=True)]
        self.seconds += time.perf_counter() - started
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


class GuidanceConvolutions(TorchFunctionMode):
    """While active, CPU convolutions that build a graph for the input gradient run on the chosen kernels.

    ``force``: None times both kernels per shape (into ``timings``); True or False fixes oneDNN or the native kernel.
    ``forwards_without_graph``: route convolutions that build no graph as well (their forward only); for the
    batch-of-one halves of a CFG batch that fast mode splits.
    """

    def __init__(
        self, force: bool | None = None, forwards_without_graph: bool = False, timings: KernelTimings | None = None
    ) -> None:
        super().__init__()
        self.force = force
        self.forwards_without_graph = forwards_without_graph
        self.timings = timings if timings is not None else KernelTimings()
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
        if any(pair is None for pair in pairs) or not isinstance(groups, int) or pairs[2] != (1, 1):
            return None  # e.g. padding="same" or a dilated kernel: leave it to PyTorch
        params = ConvolutionParams(*pairs, groups)  # type: ignore[arg-type]
        weights_need_grad = weight.requires_grad or (bias is not None and bias.requires_grad)
        if torch.is_grad_enabled() and (x.requires_grad or weights_need_grad):
            if not x.requires_grad or weights_need_grad or weight.is_inference():
                return None  # weight gradients, or weights autograd may not save: PyTorch's own path decides
            if self.force is None:
                kernels = self.timings.kernels(x, weight, bias, params)
            else:
                kernels = Kernels(self.force, self.force)
            self.routed += 1
            return kernel_convolution(x, weight, bias, params, kernels)
        if not self.forwards_without_graph:
            return None
        onednn = self.force if self.force is not None else self.timings.forward_kernel(x, weight, bias, params)
        self.routed += 1
        return _forward(x, weight, bias, params, onednn)


@contextmanager
def guidance_convolutions(
    choice: str, device: torch.device, timings: KernelTimings | None = None, forwards_without_graph: bool = False
):
    """The convolution routing of a guidance pass for ``choice`` (see ``CPU_CONVOLUTION_CHOICES``) on ``device``;
    a no-op off CPU, with ``choice="default"``, or without oneDNN. ``auto`` keeps its timings in ``timings``.
    ``forwards_without_graph``: see :class:`GuidanceConvolutions`."""
    if choice not in CPU_CONVOLUTION_CHOICES:
        raise ValueError(f"cpu_convolution must be one of {', '.join(CPU_CONVOLUTION_CHOICES)}, got {choice!r}")
    if choice == "default" or device.type != "cpu" or not onednn_available():
        yield None
        return
    mode = GuidanceConvolutions(
        force=False if choice == "native" else None, forwards_without_graph=forwards_without_graph, timings=timings
    )
    before = mode.timings.seconds
    try:
        with mode:
            yield mode
    finally:
        if mode.timings.seconds > before:
            log.info(
                "Binding guidance: timed the CPU convolution kernels of new shapes in %.1f s (once per shape and "
                "ComfyUI start; %s so far). 'cpu_convolution = default' skips this and keeps CPU images identical "
                "across restarts.",
                mode.timings.seconds - before,
                mode.timings.native_share(),
            )
