"""The guidance pass's CPU convolution routing: same convolution and gradient on either kernel, only where it
builds a graph (and, when asked, in fast mode's split batch), timed once per shape, and no change to guided
losses."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from binding_guidance.guidance import cpu_convolution
from binding_guidance.guidance.cpu_convolution import GuidanceConvolutions, guidance_convolutions
from guided_runs import prompt_case, sample_guided, syngen_config

pytestmark = pytest.mark.skipif(not cpu_convolution.onednn_available(), reason="this PyTorch has no oneDNN")

SHAPES = [
    # (in channels, out channels, side, kernel, stride, padding, groups, bias)
    (64, 64, 8, 3, 1, 1, 1, True),
    (32, 48, 16, 3, 2, 1, 1, True),  # a downsampling conv
    (48, 32, 8, 1, 1, 0, 1, False),  # a 1×1 skip projection without bias
    (32, 32, 8, 3, 1, 1, 4, True),  # grouped
]


def _stock_and_routed(shape: tuple, force: bool | None) -> tuple[tuple, tuple, GuidanceConvolutions]:
    cin, cout, side, kernel, stride, padding, groups, has_bias = shape
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(cout, cin // groups, kernel, kernel, generator=generator) * 0.1
    bias = torch.randn(cout, generator=generator) if has_bias else None
    x = torch.randn(1, cin, side, side, generator=generator)
    results = []
    mode = GuidanceConvolutions(force)
    for routing in (None, mode):
        leaf = x.clone().requires_grad_(True)
        if routing is None:
            out = torch.nn.functional.conv2d(leaf, weight, bias, stride, padding, 1, groups)
        else:
            with routing:
                out = torch.nn.functional.conv2d(leaf, weight, bias, stride, padding, 1, groups)
        (grad,) = torch.autograd.grad((out * out).sum(), leaf)
        results.append((out.detach(), grad))
    return results[0], results[1], mode


@pytest.mark.parametrize("force", [True, False, None], ids=["onednn", "native", "timed"])
@pytest.mark.parametrize("shape", SHAPES, ids=["3x3", "stride2", "1x1-nobias", "grouped"])
def test_routed_convolution_matches_pytorch_forward_and_input_gradient(shape: tuple, force: bool | None) -> None:
    (out, grad), (routed_out, routed_grad), mode = _stock_and_routed(shape, force)
    assert mode.routed == 1
    assert torch.allclose(routed_out, out, rtol=1e-5, atol=1e-5 * float(out.abs().max()))
    assert torch.allclose(routed_grad, grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()))


def test_convolutions_without_a_graph_to_build_are_left_to_pytorch() -> None:
    weight = torch.randn(8, 8, 3, 3)
    x = torch.randn(1, 8, 6, 6)
    trained = torch.randn(8, 8, 3, 3, requires_grad=True)
    with GuidanceConvolutions(force=False) as mode:
        torch.nn.functional.conv2d(x, weight, padding=1)  # input needs no gradient
        with torch.no_grad():
            torch.nn.functional.conv2d(x.clone().requires_grad_(True), weight, padding=1)
        torch.nn.functional.conv2d(x.clone().requires_grad_(True), weight, padding="same")
        out = torch.nn.functional.conv2d(x.clone().requires_grad_(True), trained, padding=1)
    assert mode.routed == 0
    (weight_grad,) = torch.autograd.grad(out.sum(), trained)  # the weight gradient still exists
    assert float(weight_grad.abs().sum()) > 0


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_forwards_without_graph_are_routed_only_when_asked_and_timed_forward_only(context: str) -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 40, 3, 3, generator=generator) * 0.1
    bias = torch.randn(40, generator=generator)
    side = 9 if context == "no_grad" else 10  # a shape of its own: each case times its shape anew
    x = torch.randn(1, 40, side, side, generator=generator)
    expected = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    forward_keys, graph_keys = len(cpu_convolution._FORWARD_CHOICES), len(cpu_convolution._CHOICES)
    outputs = []
    for forwards_without_graph in (False, True, True):
        with GuidanceConvolutions(forwards_without_graph=forwards_without_graph) as mode:
            with torch.no_grad() if context == "no_grad" else torch.inference_mode():
                outputs.append(torch.nn.functional.conv2d(x, weight, bias, padding=1))
        assert mode.routed == int(forwards_without_graph)
        if forwards_without_graph:
            assert len(cpu_convolution._FORWARD_CHOICES) == forward_keys + 1  # timed once, on first use
    assert len(cpu_convolution._CHOICES) == graph_keys  # no backward was timed
    for output in outputs:
        assert torch.allclose(output, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_forward_without_graph_reuses_the_forward_choice_of_a_shape_timed_with_its_backward() -> None:
    weight = torch.randn(28, 28, 3, 3)
    x = torch.randn(1, 28, 5, 5)
    with GuidanceConvolutions(forwards_without_graph=True):
        torch.nn.functional.conv2d(x.clone().requires_grad_(True), weight, padding=1)
        forward_keys, seconds = len(cpu_convolution._FORWARD_CHOICES), cpu_convolution.tuning_seconds()
        with torch.no_grad():
            torch.nn.functional.conv2d(x, weight, padding=1)
    assert len(cpu_convolution._FORWARD_CHOICES) == forward_keys
    assert cpu_convolution.tuning_seconds() == seconds


def test_routed_convolution_keeps_only_the_weight_for_its_backward() -> None:
    weight = torch.randn(16, 16, 3, 3)
    leaf = torch.randn(1, 16, 8, 8, requires_grad=True)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    for routing in (None, GuidanceConvolutions(force=False)):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if routing is None:
                torch.nn.functional.conv2d(leaf, weight, padding=1)
            else:
                with routing:
                    torch.nn.functional.conv2d(leaf, weight, padding=1)
        if routing is None:
            assert leaf.numel() in saved  # PyTorch's convolution keeps its input
    assert saved == [weight.numel()]


def test_each_shape_is_timed_once() -> None:
    weight = torch.randn(24, 24, 3, 3)
    leaf = torch.randn(1, 24, 7, 7, requires_grad=True)
    key_count = len(cpu_convolution._CHOICES)
    with GuidanceConvolutions() as mode:
        torch.nn.functional.conv2d(leaf, weight, padding=1)
        after_first = cpu_convolution.tuning_seconds()
        torch.nn.functional.conv2d(leaf, weight, padding=1)
    assert mode.routed == 2
    assert len(cpu_convolution._CHOICES) == key_count + 1
    assert after_first > 0
    assert cpu_convolution.tuning_seconds() == after_first


def test_routing_is_off_for_default_choice_and_other_devices_and_rejects_unknown_choices() -> None:
    with guidance_convolutions("default", torch.device("cpu")) as mode:
        assert mode is None
    with guidance_convolutions("auto", torch.device("cuda")) as mode:
        assert mode is None
    with guidance_convolutions("auto", torch.device("cpu")) as mode:
        assert isinstance(mode, GuidanceConvolutions) and mode.force is None
    with guidance_convolutions("native", torch.device("cpu")) as mode:
        assert isinstance(mode, GuidanceConvolutions) and mode.force is False
    with pytest.raises(ValueError, match="cpu_convolution must be one of auto, default, native, got 'onednn'"):
        with guidance_convolutions("onednn", torch.device("cpu")):
            pass


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_kernel_choice_does_not_change_guided_losses_or_latents(harness: Any, sd15: tuple, mode: str) -> None:
    """Real guided runs: the native kernel gives PyTorch's default losses and latent within float rounding, and
    "auto" times the tiny UNet's convolutions."""
    model, clip, _ = sd15
    case = prompt_case(harness, model, clip)
    routing = harness.module("guidance.cpu_convolution")  # the module the sampler, as ComfyUI loaded it, uses
    choices, forward_choices = routing._CHOICES, routing._FORWARD_CHOICES
    runs = {}
    for choice in ("default", "native", "auto"):
        if choice == "auto":
            choices.clear()  # earlier guided tests timed these shapes already: "auto" must time them anew
            forward_choices.clear()
        key_count = len(choices) + len(forward_choices)
        config = syngen_config(harness, {"scale_factor": 200.0}, mode=mode, cpu_convolution=choice)
        runs[choice] = sample_guided(harness, case, config, steps=4)
        if choice != "auto":
            assert len(choices) + len(forward_choices) == key_count  # only "auto" times kernels
    assert any(shapes[0][0] == 1 for shapes in choices)  # "auto" timed the conditional pass's convolutions
    # Fast mode splits the CFG batch (CFG 5 here): the layers after the last recorded one ran as batches of one
    # without a graph, on timed kernels. Faithful mode's own CFG pass is ComfyUI's, untouched.
    assert (len(forward_choices) > 0) == (mode == "fast")
    assert all(shapes[0][0] == 1 for shapes in forward_choices)
    (default_latent, default_report), (native_latent, native_report) = runs["default"], runs["native"]
    assert [s.stepped for s in native_report.steps] == [s.stepped for s in default_report.steps]
    assert any(s.stepped for s in native_report.steps)
    # The SynGen total nearly cancels (≈ -0.006 from terms of order 1), so rounding shows at 1e-5 of it.
    for a, b in zip(native_report.steps, default_report.steps, strict=True):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-4)
    scale = float(default_latent.abs().max())
    assert torch.allclose(native_latent, default_latent, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.equal(native_latent, default_latent)  # the native kernel did run: rounding differs


def test_fast_mode_without_a_cfg_batch_to_split_leaves_forwards_without_graph_alone(harness: Any, sd15: tuple) -> None:
    """At CFG 1 ComfyUI runs the conditional chunk alone, as a plain step would: nothing of it is split off, so
    only the graph part is routed."""
    model, clip, _ = sd15
    case = prompt_case(harness, model, clip)
    routing = harness.module("guidance.cpu_convolution")
    routing._CHOICES.clear()
    routing._FORWARD_CHOICES.clear()
    config = syngen_config(harness, {"scale_factor": 200.0}, mode="fast", cpu_convolution="auto")
    _, report = sample_guided(harness, case, config, steps=3, cfg=1.0)
    assert any(s.stepped for s in report.steps)
    assert len(routing._CHOICES) > 0
    assert len(routing._FORWARD_CHOICES) == 0


def test_config_node_reads_cpu_convolution_from_advanced(harness: Any) -> None:
    config_node = harness.module("nodes.config_node")
    assert config_node.build_config("syngen", 20.0, 0.5).cpu_convolution == "auto"
    chosen = config_node.build_config("syngen", 20.0, 0.5, "cpu_convolution = default")
    assert chosen.cpu_convolution == "default"
    assert config_node.build_config("syngen", 20.0, 0.5, previous=chosen).cpu_convolution == "default"
    with pytest.raises(ValueError,
                       match=r"cpu_convolution must be 'auto', 'default' or 'native', got 'fast' \(default 'auto'\)"):
        config_node.build_config("syngen", 20.0, 0.5, "cpu_convolution = fast")
