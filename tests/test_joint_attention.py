"""Joint-attention capture and token positions on tiny Flux.1 and SD3 models (ComfyUI's classes, real tokenizers).

What is asserted here, per family: Parse Bindings' positions (Flux: T5 positions, long prompts included; SD3: the
T5 segment of its [CLIP-L‖G, T5] context); the recorded maps equal an explicit softmax of each block's own q and
k, recomputed from its weights; chosen blocks. Flux only: both normalisations, and the token softmax of A&E and D&B
on a T5 context. What the families share in sampling (every method lowers its loss, fast mode, batch 2 without
leak, the CONST step) is in test_dit_guidance.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.dit_runs import (
    assert_recorded_equals_explicit,
    config,
    explicit_softmax,
    flux_double_block_maps,
    guided,
    record_beside_explicit,
    tiny_case,
)


@pytest.fixture(scope="module")
def flux(harness: Any) -> dict:
    """The tiny Flux model and CLIP, the encoded prompt and the Parse Bindings output (built once per module)."""
    return tiny_case(harness, "flux")


def test_flux_parse_bindings_addresses_t5_positions(flux: dict) -> None:
    """Flux's context is T5's output (256 tokens, no start token): pink=2 → sunflower=3, yellow=7 → flamingo=9-11
    ('▁' at 8 is sentencepiece's separate word-start piece). CLIP-L, which only gives the pooled vector, is not
    addressed."""
    layout = flux["bindings"].layout
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((3,), ((2,),)), ((9, 10, 11), ((7,),))]
    assert layout.prompt_positions == tuple(range(12)) and layout.context_length == 256
    assert flux["positive"][0][0].shape == (1, 256, 64)
    table = flux["bindings"].table
    assert table.encoders == ("t5xxl",) and [t.piece for t in table.tokens[7:12]] == ["▁yellow", "▁", "flam", "ing",
                                                                                      "o"]
    assert table.tokens[12].kind == "end" and {t.kind for t in table.tokens[13:]} == {"pad"}
    assert flux["bindings"].text_self_attention is None  # T-SAM's T5 matrix is computed only when T-SAM samples


def test_flux_t5_positions_of_a_prompt_longer_than_the_padding(harness: Any, flux: dict) -> None:
    """ComfyUI's T5 has no 77-token window: a prompt past 256 tokens makes a longer context, one column per token."""
    prompt = "a pink sunflower, " * 60 + "and a yellow flamingo"
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(flux["clip"], prompt)
    table = bindings.table
    tokens = flux["clip"].tokenize(prompt)["t5xxl"]
    assert len(tokens) == 1 and table.context_length == len(tokens[0]) > 256
    with torch.inference_mode():
        cond = harness.node("CLIPTextEncode").encode(flux["clip"], prompt)[0][0][0]
    assert cond.shape[1] == table.context_length
    last = bindings.layout.bindings[-1]
    pieces = "".join(table[p].piece for p in last.noun).replace("▁", "")
    assert pieces == "flamingo" and min(last.noun) > 256
    assert table[last.modifiers[0][0]].piece == "▁yellow"


def test_flux_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, flux: dict) -> None:
    """Batch [uncond, cond]: the recorder keeps the conditional row; its maps are the head- and block-mean of
    softmax(q kᵀ/√d) over the text keys of both double-stream blocks (RoPE applied), pooled 2×2 (ceil) to 1/32 of
    the image side; the block outputs are those of a plain forward."""
    blocks = flux["model"].model.diffusion_model.double_blocks
    result = record_beside_explicit(harness, flux, blocks, flux_double_block_maps,
                                    {"guidance": torch.tensor([3.5, 3.5])})
    assert [b.label for b in result["plan"].blocks] == ["double 0", "double 1"] and result["levels"][2].count == 4
    assert_recorded_equals_explicit(result, 256)


def test_flux_joint_normalization_keeps_the_share_of_attention_on_text(harness: Any, flux: dict) -> None:
    """'joint': the text columns of the softmax over text and image keys, so a map column sums to less than 1."""
    capture = harness.module("attention_patch.capture")
    model = flux["model"].model
    sums = {}
    for normalization in ("text", "joint"):
        recorder = capture.capture_for_model(flux["model"], 4, lambda f: {f}, joint_normalization=normalization)
        recorder = recorder.recorder(stop_early=True)
        options = recorder.model_options_with_patches({})
        with torch.no_grad(), pytest.raises(harness.module("attention_patch").RecordingComplete):
            model.apply_model(torch.randn(1, 16, 16, 16), torch.tensor([0.6]), c_crossattn=flux["positive"][0][0],
                              y=flux["positive"][0][1]["pooled_output"], guidance=torch.tensor([3.5]),
                              transformer_options=options["transformer_options"])
        sums[normalization] = recorder.levels()[4].mean.sum(dim=1)
    assert torch.allclose(sums["text"], torch.ones_like(sums["text"]), atol=1e-5)
    assert bool((sums["joint"] < 0.99).all()) and bool((sums["joint"] > 0).all())


def test_flux_chosen_blocks_and_stop_after_the_last_one(harness: Any, flux: dict) -> None:
    """'dit_blocks = single 1' records that block only; a missing block is named before sampling."""
    seen: list[int] = []
    final = flux["model"].model.diffusion_model.final_layer
    handle = final.register_forward_hook(lambda *_: seen.append(1))
    try:
        _, report = guided(harness, flux, config(harness, advanced="dit_blocks = single 1"), steps=2)
    finally:
        handle.remove()
    assert report.steps[0].stepped
    assert len(seen) == 2  # the two sampling calls; the guidance passes stopped before the final layer
    errors = harness.module("attention_patch").UnsupportedModelError
    with pytest.raises(errors, match=r"no block double 5 .*double 0-1 and single 0-1"):
        guided(harness, flux, config(harness, advanced="dit_blocks = double 5"), steps=2)
    with pytest.raises(ValueError, match=r"dit_blocks: 'triple 3' is not 'double N'.*\(default ''\)"):
        config(harness, advanced="dit_blocks = triple 3")
    options = harness.module("nodes.config_node").BindingGuidanceOptions().configure(
        main_factor="4", stop_below=0.0, guidance_attention="sdpa", cpu_convolution="default",
        measure_after_step=False, joint_normalization="joint", dit_blocks="double 1, single 0-1")
    assert (options[0].joint_normalization, options[0].dit_blocks) == ("joint", "double 1, single 0-1")


@pytest.mark.parametrize("method", ["attend_and_excite", "divide_and_bind"])
def test_token_softmax_keeps_a_noun_at_t5_position_zero(method: str) -> None:
    """T5 has no start token: a noun can be column 0 ("cats and dogs"), and A&E's / D&B's token softmax runs over
    the prompt tokens of the one T5 sequence, not over CLIP's per-77 columns 1..75."""
    import importlib

    objectives = importlib.import_module("binding_guidance.binding_losses.objectives")
    types = importlib.import_module("binding_guidance.binding_losses.types")
    maps = torch.rand(1, 256, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = maps / maps.sum(dim=1, keepdim=True)
    layout = types.TokenLayout(bindings=(types.TokenBinding((0,), ((3,),)), types.TokenBinding((2,))),
                               prompt_positions=(0, 1, 2, 3), context_length=256, clip_chunks=False)
    objective = objectives.make_objective(method)
    assert objective.softmax_columns(layout, 256) == [(0, 4)] and objective.softmax_chunk(layout, 256) == 256
    result = objective.loss({4: types.AttentionLevel(maps, 1)}, layout, 0, 50)
    maxima = result.terms["maxima"]
    assert bool((maxima > 0.2).all()), maxima  # four tokens share the softmax: every subject has real mass


# ---------------------------------------------------------------------------------------------------------------
# SD3


@pytest.fixture(scope="module")
def sd3(harness: Any) -> dict:
    """The tiny SD3 model and CLIP, the encoded prompt and the Parse Bindings output (built once per module)."""
    return tiny_case(harness, "sd3")


def test_sd3_positions_address_the_t5_segment_after_the_clip_chunk(sd3: dict) -> None:
    """SD3's context: 77 CLIP-L‖G columns, then T5 (padded to 77). pink=79 → sunflower=80, yellow=84 →
    flamingo=86-88: T5 positions 2, 3, 7, 9-11 shifted by the CLIP chunk."""
    layout = sd3["bindings"].layout
    assert sd3["positive"][0][0].shape == (1, 154, 4096)
    assert layout.context_length == 154 and not layout.clip_chunks
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((80,), ((79,),)), ((86, 87, 88), ((84,),))]
    assert layout.prompt_positions == tuple(range(77, 89))
    table = sd3["bindings"].table
    assert table.encoders == ("l", "g", "t5xxl") and all(t.kind == "pad" for t in table.tokens[:77])
    assert table[84].piece == "▁yellow" and table[89].kind == "end"


def _joint_block_maps(block: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """One joint block's image→text softmax, recomputed from its own weights and inputs (context, x, c)."""
    context, x = args[0], args[1]
    context_qkv, _ = block.context_block.pre_attention(context, kwargs["c"])
    x_qkv, _ = block.x_block.pre_attention(x, kwargs["c"])
    heads = block.x_block.attn.num_heads

    def split(part: int) -> torch.Tensor:
        joint = torch.cat((context_qkv[part], x_qkv[part]), dim=1)
        return joint.reshape(joint.shape[0], joint.shape[1], heads, -1).transpose(1, 2)

    return explicit_softmax(split(0), split(1), context.shape[1], (13, 19))


def test_sd3_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, sd3: dict) -> None:
    """Batch [uncond, cond]: the conditional row's maps are the head- and block-mean softmax over the text keys of
    both joint blocks (numbered by the recorder: SD3 sets no block labels), pooled 2×2; block outputs unchanged."""
    blocks = sd3["model"].model.diffusion_model.joint_blocks
    result = record_beside_explicit(harness, sd3, blocks, _joint_block_maps, {})
    assert [b.label for b in result["plan"].blocks] == ["joint 0", "joint 1"] and result["levels"][2].count == 4
    assert_recorded_equals_explicit(result, 154)


def test_sd3_chosen_blocks(harness: Any, sd3: dict) -> None:
    """'dit_blocks = joint 0' records the first block only, and guidance still lowers the loss."""
    capture = harness.module("attention_patch.capture")
    plan = capture.capture_for_model(sd3["model"], 4, lambda f: {f}, dit_blocks="joint 0")
    assert [b.label for b in plan.blocks] == ["joint 0"]
    _, report = guided(harness, sd3, config(harness, advanced="dit_blocks = joint 0"), steps=2)
    assert report.steps[0].stepped and report.steps[0].loss_after_step < report.steps[0].loss_before
    with pytest.raises(capture.UnsupportedModelError, match=r"no block joint 7 \(it has joint 0-1\)"):
        guided(harness, sd3, config(harness, advanced="dit_blocks = joint 7"), steps=2)
