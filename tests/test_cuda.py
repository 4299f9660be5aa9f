"""Guidance on a CUDA device: half-precision UNet, partial (lowvram) loading, and model moves between runs.

These run only where ComfyUI itself runs on a GPU: set ``BINDING_GUIDANCE_DEVICE=cuda`` (the harness otherwise
pins ComfyUI to the CPU, as in CI) on a machine with CUDA. On CPU they are skipped; the same behaviours on CPU are
covered by test_guided_sampler.py, test_fast_mode.py and test_model_lifecycle.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from devkit.guided_runs import (
    assert_same_prediction,
    fresh_model,
    prompt_case,
    sample_guided,
    sample_stock,
    syngen_config,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("BINDING_GUIDANCE_DEVICE") != "cuda" or not torch.cuda.is_available(),
        reason="needs a CUDA device and BINDING_GUIDANCE_DEVICE=cuda",
    ),
]

LATENT = torch.zeros(1, 4, 32, 32)


@pytest.fixture(scope="module")
def setup(harness: Any, tiny_checkpoint: str) -> dict:
    model, clip = fresh_model(harness, tiny_checkpoint)
    return {
        **prompt_case(harness, model, clip),
        # Keyed by (mode, scale factor). A large step shows the loss going down: on a random-weight model the
        # default step (20) moves the loss less than fp16 rounding does.
        "configs": {
            (mode, scale): syngen_config(
                harness, {"scale_factor": scale}, mode=mode, measure_after_step=mode == "faithful"
            )
            for mode in ("faithful", "fast")
            for scale in (20.0, 1000.0)
        },
    }


def _guided(harness: Any, setup: dict, mode: str, scale: float = 20.0) -> tuple[torch.Tensor, Any]:
    return sample_guided(harness, setup, setup["configs"][mode, scale], steps=6, latent=LATENT)


def _free_gpu() -> None:
    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def test_model_runs_on_the_gpu_in_half_precision(setup: dict) -> None:
    model = setup["model"]
    assert model.load_device.type == "cuda"
    assert model.model.get_dtype() in (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_half_precision_guidance_lowers_the_loss(harness: Any, setup: dict, mode: str) -> None:
    """The backward runs through the fp16 UNet: its gradient must not underflow to nothing."""
    out, report = _guided(harness, setup, mode, scale=1000.0)
    assert torch.isfinite(out).all()
    assert report.steps and all(record.stepped for record in report.steps[:-1]), report.to_dict()
    if mode == "faithful":
        lowered = [record.loss_after_step < record.loss_before for record in report.steps]
        assert sum(lowered) >= 0.9 * len(lowered), report.to_dict()
    assert (out - sample_stock(setup, steps=6, latent=LATENT)).abs().max() > 1e-3


def test_plain_sampling_is_unchanged_by_a_guided_run_on_the_gpu(harness: Any, setup: dict) -> None:
    before = sample_stock(setup, steps=6, latent=LATENT)
    _guided(harness, setup, "faithful")
    _guided(harness, setup, "fast")
    after = sample_stock(setup, steps=6, latent=LATENT)
    assert torch.equal(before, after)


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_reload_onto_the_gpu_between_runs_gives_the_same_image(harness: Any, setup: dict, mode: str) -> None:
    """ComfyUI moves weights back to the CPU and reloads them (as inference tensors again) between runs.

    Not bit-identical on a GPU: the fused attention kernels' backward accumulates with atomics, so two runs of the
    same guidance differ in the last bits of the gradient (on CPU, test_model_lifecycle asserts bit-identity).
    """
    first = _guided(harness, setup, mode)[0]
    _free_gpu()
    assert setup["model"].loaded_size() == 0
    second = _guided(harness, setup, mode)[0]
    assert setup["model"].loaded_size() == setup["model"].model_size()
    assert_same_prediction(second, first, setup["model"])


@pytest.mark.parametrize("vram_state", ["LOW_VRAM", "NO_VRAM"])
def test_partially_loaded_model_is_guided_like_a_fully_loaded_one(
    harness: Any, setup: dict, vram_state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lowvram/--novram: weights ComfyUI leaves on the CPU are cast to the GPU layer by layer during the guidance
    pass too, and the guided image matches the fully loaded model's."""
    import comfy.model_management as mm

    model = setup["model"]
    full, full_report = _guided(harness, setup, "faithful")
    _free_gpu()
    # What `--lowvram` / `--novram` set at start-up; LOW_VRAM also needs a budget under the model's size, which
    # reserving all but ~60 MB of the card's free memory gives on any GPU.
    monkeypatch.setattr(mm, "vram_state", getattr(mm.VRAMState, vram_state))
    if vram_state == "LOW_VRAM":
        free = mm.get_free_memory(model.load_device)
        budget = 60 * 2**20
        monkeypatch.setattr(
            mm, "EXTRA_RESERVED_VRAM", free - budget - mm.minimum_inference_memory() + mm.EXTRA_RESERVED_VRAM
        )
    partial, partial_report = _guided(harness, setup, "faithful")
    loaded, total = model.loaded_size(), model.model_size()
    _free_gpu()
    assert loaded < total, f"model was fully loaded ({loaded} of {total} bytes); the test did not exercise lowvram"
    assert [r.stepped for r in partial_report.steps] == [r.stepped for r in full_report.steps]
    for a, b in zip(partial_report.steps, full_report.steps, strict=True):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-2, abs=1e-7)
    assert_same_prediction(partial, full, model)
