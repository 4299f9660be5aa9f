"""Joint-attention families beyond Flux.1 and SD3: Chroma, on tiny models built with ComfyUI's classes and the
real tokenizers; and the DiTs still refused, by name, before sampling.

What is asserted here, per family: Parse Bindings' positions against the real tokenizer output; the recorded maps
equal an explicit softmax of each block's own q and k, recomputed from its weights; the default blocks. Guided
sampling (every method lowers its loss, fast mode, batch 2 without leak, the CONST step) runs in
test_dit_guidance.py, whose families include these.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.dit_runs import assert_recorded_equals_explicit, flux_double_block_maps, record_beside_explicit, tiny_case


@pytest.fixture(scope="module")
def chroma(harness: Any) -> dict:
    """The tiny Chroma model and its T5 encoder, the encoded prompt and the Parse Bindings output."""
    return tiny_case(harness, "chroma")


def test_chroma_positions_are_t5_positions_without_padding(harness: Any, chroma: dict) -> None:
    """Chroma's T5 tokenizer (ComfyUI's pixart_t5) does not pad: the context is the prompt's 12 pieces and
    ``</s>``. Positions are the Flux ones (pink=2 → sunflower=3, yellow=7 → flamingo=9-11); with
    T5TokenizerOptions' padding, the pad columns join the context and stay unaddressed."""
    layout = chroma["bindings"].layout
    assert chroma["positive"][0][0].shape == (1, 13, 64)
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((3,), ((2,),)), ((9, 10, 11), ((7,),))]
    assert layout.prompt_positions == tuple(range(12)) and layout.context_length == 13
    table = chroma["bindings"].table
    assert table.encoders == ("t5xxl",) and table[12].kind == "end"
    padded = chroma["clip"].clone()  # what the T5TokenizerOptions node does
    padded.set_tokenizer_option("t5xxl_min_padding", 3)
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(padded, "a yellow flamingo")
    with torch.inference_mode():
        context = harness.node("CLIPTextEncode").encode(padded, "a yellow flamingo")[0][0][0]
    assert bindings.layout.context_length == context.shape[1] == 11  # ▁ a ▁yellow ▁ flam ing o </s>, 3 pads
    assert [t.kind for t in bindings.table.tokens[-4:]] == ["end", "pad", "pad", "pad"]
    assert bindings.layout.bindings[0].modifiers == ((2,),)


def test_chroma_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, chroma: dict) -> None:
    """Chroma's blocks are Flux's (modulations handed in by the approximator): the Flux capture records both
    double-stream blocks by default, and the conditional row's maps are the head- and block-mean softmax over the
    13 text keys, pooled 2×2; the block outputs are those of a plain forward."""
    blocks = chroma["model"].model.diffusion_model.double_blocks
    result = record_beside_explicit(harness, chroma, blocks, flux_double_block_maps,
                                    {"guidance": torch.tensor([0.0, 0.0])})
    assert [b.label for b in result["plan"].blocks] == ["double 0", "double 1"] and result["levels"][2].count == 4
    assert_recorded_equals_explicit(result, 13)


# ---------------------------------------------------------------------------------------------------------------
# Refused by name


CHROMA_RADIANCE_TINY = {
    "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "context_in_dim": 64,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 16, "qkv_bias": True, "in_dim": 64, "out_dim": 64,
    "hidden_dim": 32, "n_layers": 1, "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 1,
    "nerf_max_freqs": 8, "nerf_tile_size": 512, "nerf_final_head_type": "linear",
    "nerf_embedder_dtype": torch.float32,
}


def test_chroma_radiance_is_refused_naming_the_family(harness: Any) -> None:
    """Chroma Radiance has Chroma's blocks but works on pixels: refused by name, with the reason."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.ChromaRadiance(dict(CHROMA_RADIANCE_TINY))
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(model_config.get_model({}, ""), load_device=cpu, offload_device=cpu)
    patch = harness.module("attention_patch")
    with pytest.raises(patch.UnsupportedModelError, match=r"connected model is ChromaRadiance, a pixel-space"):
        patch.require_supported(model)
