"""Memory of DiT guidance on tiny Flux.1, Chroma and SD3 models: block checkpointing, and weights stored in fp8 or bf16
through ComfyUI's manual cast.

What is asserted, per family (Flux.1, Chroma, SD3): with ``dit_checkpointing`` the guidance pass recomputes the
blocks before the last recorded one in the backward, records each block once, and gives the same maps and the
bit-identical gradient as without it; faithful and fast sampling give the same latent either way. With weights
stored in fp8 (e4m3fn) or bf16 and cast to fp32 by ComfyUI's manual cast, guidance lowers the loss at every guided
step, checkpointing changes nothing in the result, and a plain run afterwards is bit-identical to one before. The
memory figures are in benchmarks/dit_activation_memory.py, not here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.dit_runs import config, guided, stock, tiny_case

OFF = "dit_checkpointing = false"


@pytest.fixture(scope="module", params=["flux", "chroma", "sd3"])
def dit(request: pytest.FixtureRequest, harness: Any) -> dict:
    """One family's tiny model (fp32 weights), CLIP, encoded prompt and bindings. The weights are frozen, as the
    sampler leaves a model ComfyUI loaded (inference_tensors.py)."""
    case = tiny_case(harness, request.param)
    case["model"].model.diffusion_model.requires_grad_(False)
    return {**case, "arch": request.param}


def stored_as(case: dict, weight_dtype: torch.dtype) -> dict:
    """``case`` with the same diffusion model built by ComfyUI with ``weight_dtype`` weights and fp32 compute (its
    manual-cast operations), holding the fp32 model's weights rounded to ``weight_dtype`` (frozen)."""
    import comfy.model_patcher

    source = case["model"].model
    model_config = type(source.model_config)(dict(source.model_config.unet_config))
    model_config.set_inference_dtype(weight_dtype, torch.float32)
    model = model_config.get_model({}, "")
    model.diffusion_model.load_state_dict(source.diffusion_model.state_dict())
    model.diffusion_model.requires_grad_(False)
    cpu = torch.device("cpu")
    return {**case, "model": comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)}


def blocks_of(case: dict) -> Any:
    diffusion_model = case["model"].model.diffusion_model
    return diffusion_model.joint_blocks if case["arch"] == "sd3" else diffusion_model.double_blocks


def guidance_pass(harness: Any, case: dict, checkpointing: bool, model_options: dict | None = None,
                  dit_blocks: str = "") -> dict:
    """One guidance forward (recorder, early stop, SDPA) on a fixed latent and a backward from a fixed weighting of
    the recorded maps: the gradient, the recorded level, and which blocks started running, in order."""
    capture = harness.module("attention_patch.capture")
    differentiable = harness.module("kernels.differentiable_attention")
    recording_complete = harness.module("attention_patch").RecordingComplete
    plan = capture.capture_for_model(case["model"], 4, lambda f: {f}, dit_blocks=dit_blocks,
                                     dit_checkpointing=checkpointing)
    recorder = plan.recorder(stop_early=True)
    options = recorder.model_options_with_patches(differentiable.with_differentiable_attention(model_options or {}))
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 16, 16, generator=generator).requires_grad_(True)
    context, pooled = case["positive"][0][0].clone(), case["positive"][0][1].get("pooled_output")
    pooled = None if pooled is None else pooled.clone()
    extra = {} if case["arch"] == "sd3" else {"guidance": torch.tensor([3.5])}
    started: list[int] = []
    hooks = [block.register_forward_pre_hook(lambda module, args, index=index: started.append(index))
             for index, block in enumerate(blocks_of(case))]
    try:
        with torch.enable_grad():
            try:
                case["model"].model.apply_model(latent, torch.tensor([0.6]), c_crossattn=context,
                                                y=pooled,
                                                transformer_options=options["transformer_options"], **extra)
            except recording_complete:
                pass
            level = recorder.levels()[4]
            weights = torch.randn(level.mean.shape, generator=generator)
            (grad,) = torch.autograd.grad((level.mean * weights).sum(), latent)
    finally:
        for hook in hooks:
            hook.remove()
    return {"grad": grad, "level": level, "started": started, "blocks": len(plan.blocks)}


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-weights", "weights-require-grad"])
def test_checkpointing_recomputes_earlier_blocks_and_gives_the_same_gradient(harness: Any, dit: dict,
                                                                              frozen: bool) -> None:
    """The default blocks of the tiny models are both blocks: block 0 is checkpointed (it starts again in the
    backward), block 1, the last recorded, is not; maps and gradient are bit-identical to the plain pass. Frozen
    weights are what the sampler makes of a model ComfyUI loaded (inference_tensors.py): then Flux's first block
    adds into its text input in place, which its recomputation must not see."""
    if not frozen:
        dit = stored_as(dit, torch.float32)
        dit["model"].model.diffusion_model.requires_grad_(True)
    plain = guidance_pass(harness, dit, checkpointing=False)
    checkpointed = guidance_pass(harness, dit, checkpointing=True)
    assert plain["started"] == [0, 1]
    assert checkpointed["started"] == [0, 1, 0]
    heads = dit["model"].model.diffusion_model.num_heads
    assert plain["level"].count == checkpointed["level"].count == heads * plain["blocks"]  # recorded once
    assert torch.equal(checkpointed["level"].mean, plain["level"].mean)
    assert plain["grad"].abs().max() > 0
    assert torch.equal(checkpointed["grad"], plain["grad"])


@pytest.mark.parametrize("dit", ["flux"], indirect=True)
def test_flux_single_stream_blocks_are_checkpointed_too(harness: Any, dit: dict) -> None:
    """Recording single block 1: both double blocks and single block 0 run again in the backward."""
    plain = guidance_pass(harness, dit, checkpointing=False, dit_blocks="single 1")
    checkpointed = guidance_pass(harness, dit, checkpointing=True, dit_blocks="single 1")
    assert checkpointed["started"] == [0, 1, 1, 0]  # double-block starts (pre-hooks on the double blocks only)
    assert torch.equal(checkpointed["grad"], plain["grad"])


def test_a_block_another_node_patched_keeps_its_patch(harness: Any, dit: dict) -> None:
    """A ``dit`` replace patch already on block 0 runs (once: the block is not checkpointed) and the gradient is
    the same."""
    calls: list[int] = []

    def foreign(args: dict, extra: dict) -> dict:
        calls.append(0)
        return extra["original_block"](args)

    patched = dit["model"].clone()
    patched.set_model_patch_replace(foreign, "dit", "double_block", 0)
    result = guidance_pass(harness, dit, checkpointing=True, model_options=patched.model_options)
    assert calls == [0] and result["started"] == [0, 1]
    assert torch.equal(result["grad"], guidance_pass(harness, dit, checkpointing=False)["grad"])


def block_starts(case: dict, run: Any) -> tuple[Any, int]:
    """``run()``'s result and how often block 0 of ``case``'s model started running."""
    started: list[int] = []
    hook = blocks_of(case)[0].register_forward_pre_hook(lambda module, args: started.append(0))
    try:
        return run(), len(started)
    finally:
        hook.remove()


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_sampling_with_and_without_checkpointing_is_identical(harness: Any, dit: dict, mode: str) -> None:
    """Fast mode computes its gradient inside the forward (the recomputation then runs mid-forward). The setting
    reaches the guidance pass: with it, block 0 runs once more per backward."""
    (on, report_on), starts_on = block_starts(dit, lambda: guided(harness, dit, config(harness, mode=mode)))
    (off, report_off), starts_off = block_starts(
        dit, lambda: guided(harness, dit, config(harness, mode=mode, advanced=OFF)))
    assert starts_on > starts_off
    assert [r.loss_before for r in report_on.steps] == [r.loss_before for r in report_off.steps]
    assert torch.equal(on, off)


@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.bfloat16], ids=["fp8", "bf16"])
def test_manual_cast_weights_guide_and_leave_no_patch(harness: Any, dit: dict, weight_dtype: torch.dtype) -> None:
    case = stored_as(dit, weight_dtype)
    diffusion_model = case["model"].model.diffusion_model
    linear = diffusion_model.x_embedder.proj if dit["arch"] == "sd3" else diffusion_model.double_blocks[0].img_attn.qkv
    assert linear.weight.dtype == weight_dtype and linear.comfy_cast_weights  # ComfyUI's manual-cast operations
    options_before = repr(case["model"].model_options)
    before = stock(case)
    out, report = guided(harness, case, config(harness))
    stepped = [r for r in report.steps if r.stepped]
    assert stepped and torch.isfinite(out).all()
    for record in stepped:
        assert record.loss_after_step < record.loss_before, record
    assert (out - before).abs().max() > 1e-4
    unchecked, _ = guided(harness, case, config(harness, advanced=OFF))
    assert torch.equal(out, unchecked)
    assert repr(case["model"].model_options) == options_before
    assert torch.equal(stock(case), before)


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_no_graph_or_guider_outlives_a_run(harness: Any, dit: dict, mode: str) -> None:
    """After each run nothing of its guidance graph stays alive: no new tensor with a grad_fn, no CFGGuider (which
    holds the model). Fast mode used to keep every run's graph and guider in a reference cycle through autograd
    when the weights require grad (a model not loaded by ComfyUI under inference mode)."""
    import gc

    import comfy.samplers

    def alive() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        guiders = sum(isinstance(o, comfy.samplers.CFGGuider) for o in objects)
        graphs = sum(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in objects)
        return guiders, graphs

    case = tiny_case(harness, dit["arch"])  # weights that require grad
    before = alive()
    for _ in range(2):
        latent, report = guided(harness, case, config(harness, mode=mode))
        assert report.steps, "the run must have guided steps for this check to mean anything"
        del latent, report
        assert alive() == before
