"""Joint-attention families beyond Flux.1 and SD3: Chroma, Z-Image and Qwen-Image, on tiny models built with
ComfyUI's classes and the real tokenizers; and the DiTs still refused, by name, before sampling.

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
# Z-Image


@pytest.fixture(scope="module")
def z_image(harness: Any) -> dict:
    """The tiny Z-Image model and its Qwen3 encoder, the encoded prompt and the Parse Bindings output."""
    return tiny_case(harness, "z_image")


def _decoded(clip: Any, table: Any, positions: tuple[int, ...]) -> str:
    """The real tokenizer's own decoding of the token ids at ``positions``."""
    return clip.tokenizer.qwen3_4b.tokenizer.decode([table[p].token_id for p in positions])


def test_z_image_positions_follow_the_chat_template(harness: Any, z_image: dict) -> None:
    """Z-Image's context is every token of ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``: the
    3 prefix tokens shift the prompt (pink=4 → sunflower=5-6, yellow=9 → flamingo=10-11), 5 suffix tokens follow.
    The real tokenizer decodes each bound position to its word."""
    layout, table, clip = z_image["bindings"].layout, z_image["bindings"].table, z_image["clip"]
    assert z_image["positive"][0][0].shape == (1, 17, 64) and layout.context_length == 17
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((5, 6), ((4,),)), ((10, 11), ((9,),))]
    assert layout.prompt_positions == tuple(range(3, 12)) and not layout.clip_chunks
    assert [t.kind for t in table.tokens] == ["template"] * 3 + ["text"] * 9 + ["template"] * 5
    words = [_decoded(clip, table, word) for b in layout.bindings for word in (b.noun, *b.modifiers)]
    assert words == [" sunflower", " pink", " flamingo", " yellow"]


def test_z_image_positions_with_literal_weights_and_a_leading_newline(harness: Any, z_image: dict) -> None:
    """Z-Image's tokenizer disables ComfyUI's weight syntax, so ``(red:1.2)`` is text: its tokens are prompt
    tokens and 'red' binds to its own token. A leading newline merges with the template's into one template
    token; unicode keeps its spans."""
    prompt = "\na (red:1.2) car beside a green café"
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(z_image["clip"], prompt)
    table, layout = bindings.table, bindings.layout
    tokens = z_image["clip"].tokenize(prompt, return_word_ids=True)["qwen3_4b"][0]
    assert layout.context_length == len(tokens) and table[2].kind == "template" and table[2].piece == "ĊĊ"
    words = {_decoded(z_image["clip"], table, b.noun): [_decoded(z_image["clip"], table, m) for m in b.modifiers]
             for b in layout.bindings}
    assert words == {" car": ["red"], " café": [" green"]}
    assert "".join(table[p].piece for p in layout.prompt_positions).startswith("aĠ(red:1.2)Ġcar")
    assert not table.warnings


def _next_dit_block_maps(text: int, padded_text: int) -> Any:
    """One NextDiT joint block's image→text softmax, recomputed from its own weights and inputs (the joint
    sequence [text, text pad, image, image pad]): the image queries against the ``text`` context keys."""
    from comfy.ldm.flux.math import apply_rope
    from devkit.dit_runs import explicit_softmax

    def maps(block: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        x, freqs, adaln = args[0], args[2], args[3]
        attention = block.attention
        scale_msa = block.adaLN_modulation(adaln).chunk(4, dim=1)[0]
        hidden = block.attention_norm1(x) * (1 + scale_msa.unsqueeze(1))
        q, k, _ = attention.qkv(hidden).split([attention.n_local_heads * attention.head_dim] * 3, dim=-1)
        shape = (x.shape[0], x.shape[1], attention.n_local_heads, attention.head_dim)
        q, k = apply_rope(attention.q_norm(q.view(shape)), attention.k_norm(k.view(shape)), freqs)
        cells = 13 * 19
        keep = torch.cat((torch.arange(text), torch.arange(padded_text, padded_text + cells)))
        return explicit_softmax(q[:, keep].transpose(1, 2), k[:, keep].transpose(1, 2), text, (13, 19))

    return maps


@pytest.mark.parametrize("pad", [32, None])
def test_z_image_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any, z_image: dict,
                                                                                 pad: int | None) -> None:
    """The recorder numbers NextDiT's joint blocks itself (``joint 0-1``; the context and noise refiners, which
    attend over text alone and image alone, are not counted), finds the image after the text padded to 32 tokens
    (or right after it, for a checkpoint without pad tokens), and its maps are the head- and block-mean softmax
    over the 17 text keys, pooled 2×2; outputs unchanged."""
    from devkit.tiny_family_models import tiny_z_image_model

    case = z_image if pad == 32 else {**z_image, "model": tiny_z_image_model(pad_tokens_multiple=pad)}
    blocks = case["model"].model.diffusion_model.layers
    result = record_beside_explicit(harness, case, blocks, _next_dit_block_maps(17, 32 if pad else 17),
                                    {"num_tokens": 17})
    assert [b.label for b in result["plan"].blocks] == ["joint 0", "joint 1"] and result["levels"][2].count == 4
    assert result["plan"].pad_multiple == (pad or 1)
    assert_recorded_equals_explicit(result, 17)


def test_z_image_chosen_blocks(harness: Any, z_image: dict) -> None:
    """'dit_blocks = joint 1' records the second joint block only; a missing block is named."""
    capture = harness.module("attention_patch.capture")
    plan = capture.capture_for_model(z_image["model"], 4, lambda f: {f}, dit_blocks="joint 1")
    assert [b.label for b in plan.blocks] == ["joint 1"]
    with pytest.raises(capture.UnsupportedModelError, match=r"no block double 0 \(it has joint 0-1\)"):
        capture.capture_for_model(z_image["model"], 4, lambda f: {f}, dit_blocks="double 0")


# ---------------------------------------------------------------------------------------------------------------
# Qwen-Image


@pytest.fixture(scope="module")
def qwen_image(harness: Any) -> dict:
    """The tiny Qwen-Image model and its Qwen2.5-VL encoder, the encoded prompt and the Parse Bindings output."""
    return tiny_case(harness, "qwen_image")


def test_qwen_image_positions_start_after_the_dropped_system_turn(harness: Any, qwen_image: dict) -> None:
    """Qwen-Image's encoder drops its template's system turn and ``<|im_start|>user\\n``: the context is the
    prompt's 9 tokens then ``<|im_end|>\\n<|im_start|>assistant\\n`` (pink=1 → sunflower=2-3, yellow=6 →
    flamingo=7-8). A prompt that starts with a newline merges it into ``user``'s newline; ComfyUI then keeps
    ``<|im_start|>user\\n\\n`` too, and the table follows: its length is the context's."""
    layout, table = qwen_image["bindings"].layout, qwen_image["bindings"].table
    assert qwen_image["positive"][0][0].shape == (1, 14, 64) and layout.context_length == 14
    assert [(b.noun, b.modifiers) for b in layout.bindings] == [((2, 3), ((1,),)), ((7, 8), ((6,),))]
    assert layout.prompt_positions == tuple(range(9)) and not layout.clip_chunks
    assert [t.kind for t in table.tokens] == ["text"] * 9 + ["template"] * 5
    decode = qwen_image["clip"].tokenizer.qwen25_7b.tokenizer.decode
    assert [decode([table[p].token_id for p in b.noun]) for b in layout.bindings] == [" sunflower", " flamingo"]
    prompt = "\na pink sunflower"
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(qwen_image["clip"], prompt)
    with torch.inference_mode():
        context = harness.node("CLIPTextEncode").encode(qwen_image["clip"], prompt)[0][0][0]
    assert bindings.layout.context_length == context.shape[1] == 3 + 4 + 5
    assert [t.piece for t in bindings.table.tokens[:3]] == ["<|im_start|>", "user", "ĊĊ"]
    assert bindings.layout.bindings[0].noun == (5, 6) and bindings.layout.bindings[0].modifiers == ((4,),)
    with pytest.raises(ValueError, match=r"prompt: .*write the prompt without a chat template"):
        harness.module("nodes.parse_node").parse_prompt_bindings(qwen_image["clip"], "<|im_start|>user\na red car")


def _qwen_image_block_maps(block: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """One Qwen-Image block's image→text softmax, recomputed from its own weights and inputs."""
    from comfy.ldm.flux.math import apply_rope1
    from devkit.dit_runs import explicit_softmax

    attn, temb = block.attn, kwargs["temb"]

    def q_k(mod: Any, norm: Any, tokens: torch.Tensor, projections: tuple, norms: tuple) -> list[torch.Tensor]:
        shift, scale, _ = mod(temb).chunk(2, dim=-1)[0].chunk(3, dim=-1)
        hidden = norm(tokens) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        return [qk_norm(project(hidden).view(tokens.shape[0], tokens.shape[1], attn.heads, -1).transpose(1, 2))
                for project, qk_norm in zip(projections, norms, strict=True)]

    txt, img = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
    txt_q, txt_k = q_k(block.txt_mod, block.txt_norm1, txt, (attn.add_q_proj, attn.add_k_proj),
                       (attn.norm_added_q, attn.norm_added_k))
    img_q, img_k = q_k(block.img_mod, block.img_norm1, img, (attn.to_q, attn.to_k), (attn.norm_q, attn.norm_k))
    rope = kwargs["image_rotary_emb"]
    q, k = apply_rope1(torch.cat((txt_q, img_q), dim=2), rope), apply_rope1(torch.cat((txt_k, img_k), dim=2), rope)
    return explicit_softmax(q, k, txt.shape[1], (13, 19))


def test_qwen_image_recorded_maps_equal_an_explicit_softmax_of_the_conditional_rows(harness: Any,
                                                                                    qwen_image: dict) -> None:
    """Qwen-Image's blocks carry ComfyUI's ``double`` labels; every block is recorded by default, and the maps
    are the head- and block-mean softmax over the 14 text keys, pooled 2×2; the block outputs are unchanged."""
    blocks = qwen_image["model"].model.diffusion_model.transformer_blocks
    result = record_beside_explicit(harness, qwen_image, blocks, _qwen_image_block_maps, {})
    assert [b.label for b in result["plan"].blocks] == ["double 0", "double 1"] and result["levels"][2].count == 4
    assert_recorded_equals_explicit(result, 14)


@pytest.mark.parametrize("arch", ["z_image", "qwen_image"])
def test_qwen_text_self_attention_is_the_attention_the_encoder_used(harness: Any, arch: str,
                                                                    request: pytest.FixtureRequest) -> None:
    """T-SAM's T' on a Qwen encoder: each layer's recomputed probabilities P give back the attention module's own
    output (``o_proj(P·V)``), so they are the ones the encoder used; P is causal with rows summing to 1; T' is
    their layer and head mean in context coordinates (Qwen-Image: the last 14 of the templated prompt's tokens,
    after the dropped system turn; Z-Image: all 17)."""
    from comfy.text_encoders.llama import Attention

    text_attention = harness.module("attention_patch.text_attention")
    case = request.getfixturevalue(arch)
    clip, prompt = case["clip"], "a pink sunflower and a yellow flamingo"
    key = case["bindings"].table.encoders[0]
    modules = [m for m in getattr(clip.cond_stage_model, key).modules() if isinstance(m, Attention)]
    calls: list[int] = []

    def checked(module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        probs = text_attention._llm_probabilities(module, args, kwargs, output)
        x = kwargs["hidden_states"].float()
        v = module.v_proj(x).view(1, x.shape[1], module.num_kv_heads, module.head_dim).transpose(1, 2)
        v = v.repeat_interleave(module.num_heads // module.num_kv_heads, dim=1)[0]
        mixed = (probs @ v).transpose(0, 1).reshape(1, x.shape[1], -1)
        assert torch.allclose(module.o_proj(mixed), output.float(), atol=1e-5)
        assert torch.equal(probs.triu(1), torch.zeros_like(probs))
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
        calls.append(1)
        return probs

    full = text_attention._layer_head_mean(clip, prompt, modules, checked)
    context = case["bindings"].layout.context_length
    matrix = text_attention.text_self_attention(clip, prompt, (key,), context)
    assert len(calls) == 3 and matrix.shape == (context, context)
    assert context == {"z_image": 17, "qwen_image": 14}[arch]
    assert torch.allclose(matrix, full[-context:, -context:], atol=1e-6)


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


LUMINA2_TINY = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 32,
                "n_layers": 1, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True,
                "axes_dims": [8, 12, 12]}


def test_lumina2_is_refused_before_sampling_naming_the_family(harness: Any) -> None:
    """Lumina 2 has Z-Image's transformer but a Gemma 2 encoder the pack does not read: the Binding-Guided
    KSampler path refuses it by name, with that reason, before the first model call."""
    import comfy.model_patcher
    import comfy.supported_models
    from devkit.tiny_models import init_weights

    model_config = comfy.supported_models.Lumina2(dict(LUMINA2_TINY))
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(model_config.get_model({}, ""), load_device=cpu, offload_device=cpu)
    init_weights(model.model.diffusion_model, 0)
    types = harness.module("binding_losses.types")
    inputs = harness.module("guidance.inputs")
    layout = types.TokenLayout(bindings=(types.TokenBinding((3,), ((2,),)),), prompt_positions=(1, 2, 3))
    bindings = inputs.PromptBindings(prompt="a pink sunflower", layout=layout)
    config = inputs.GuidanceConfig(objective=harness.module("binding_losses.objectives").make_objective("syngen"))
    cond = [[torch.randn(1, 8, 32), {}]]
    calls: list[int] = []
    handle = model.model.diffusion_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        refused = r"connected model is Lumina2 \(diffusion model NextDiT\), Lumina 2's NextDiT.*Gemma 2"
        with pytest.raises(harness.module("attention_patch").UnsupportedModelError, match=refused):
            harness.module("guidance.sample").guided_sample(model, 0, 2, 3.0, "euler", "simple", cond, cond,
                                                            torch.zeros(1, 16, 8, 8), bindings, config)
    finally:
        handle.remove()
    assert calls == []
