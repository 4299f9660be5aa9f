"""T-SAM's T5 text self-attention (Flux.1, SD3) on the tiny models' real T5 encoders and the real sentencepiece
tokenizer.

What is asserted: the side pass's matrix equals T5's attention recomputed here from the encoder's weights alone
(embedding, relative position buckets, RMS norms, gated-GELU feed-forward, all in fp64), averaged over layers and
heads, placed at the T5 segment's context columns (after CLIP-L‖G on SD3); the fp64 forward reproduces ComfyUI's
conditioning (so it is the encoder ComfyUI ran); and the conditioning is bit-identical with and without the side
pass, whose hooks are gone afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from devkit.guided_runs import PROMPT

FAMILIES = ("flux", "sd3")


@pytest.fixture(scope="module", params=FAMILIES)
def encoder(request: pytest.FixtureRequest, harness: Any) -> dict:
    """One family's tiny CLIP (with T5), Parse Bindings' output and the T5 head count it was built with."""
    from conftest import TEST_CACHE
    from devkit.tiny_dit_files import load_tiny_clip
    from devkit.tiny_dit_models import SD3_TEXT_ENCODERS, TINY_TEXT_ENCODERS

    clip = load_tiny_clip(request.param, TEST_CACHE)
    configs = TINY_TEXT_ENCODERS if request.param == "flux" else SD3_TEXT_ENCODERS
    bindings, _ = harness.module("nodes.parse_node").parse_prompt_bindings(clip, PROMPT)
    return {"arch": request.param, "clip": clip, "bindings": bindings,
            "heads": configs["t5xxl_model_config"]["num_heads"]}


def t5_bucket(offset: int) -> int:
    """T5's bidirectional relative-position bucket of ``offset`` = key − query (32 buckets, max distance 128), in
    integers: 16 buckets per direction, one per distance below 8, then 8 logarithmic ones, so distance d ≥ 8 gets
    8 + ⌊2·log2(d/8)⌋ = 8 + ⌊log2(d²/64)⌋, at most 15."""
    bucket = 16 if offset > 0 else 0
    distance = abs(offset)
    if distance < 8:
        return bucket + distance
    return bucket + min(15, 8 + (distance * distance // 64).bit_length() - 1)


def explicit_t5(state: dict[str, torch.Tensor], ids: list[int], heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 T5 encoder from its state dict: (the layer- and head-mean of softmax(q kᵀ + position bias), the
    final hidden states). No mask: ComfyUI's Flux and SD3 T5 run without one by default."""
    w = {name: value.double() for name, value in state.items()}
    length = len(ids)
    x = w["shared.weight"][torch.tensor(ids)]
    buckets = torch.tensor([[t5_bucket(key - query) for key in range(length)] for query in range(length)])
    bias = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][buckets].permute(2, 0, 1)

    def rms_norm(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * weight

    def by_head(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(length, heads, -1).transpose(0, 1)

    layers = sorted({int(name.split(".")[2]) for name in w if name.startswith("encoder.block.")})
    probabilities = []
    for layer in layers:
        p = f"encoder.block.{layer}.layer."
        h = rms_norm(x, w[p + "0.layer_norm.weight"])
        q, k, v = (by_head(h @ w[f"{p}0.SelfAttention.{name}.weight"].T) for name in "qkv")
        probs = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        probabilities.append(probs.mean(dim=0))
        x = x + (probs @ v).transpose(0, 1).reshape(length, -1) @ w[p + "0.SelfAttention.o.weight"].T
        h = rms_norm(x, w[p + "1.layer_norm.weight"])
        gate = torch.nn.functional.gelu(h @ w[p + "1.DenseReluDense.wi_0.weight"].T, approximate="tanh")
        x = x + (gate * (h @ w[p + "1.DenseReluDense.wi_1.weight"].T)) @ w[p + "1.DenseReluDense.wo.weight"].T
    return torch.stack(probabilities).mean(dim=0), rms_norm(x, w["encoder.final_layer_norm.weight"])


def _encode(harness: Any, clip: Any) -> list:
    with torch.inference_mode():
        return harness.node("CLIPTextEncode").encode(clip, PROMPT)[0]


def test_t5_self_attention_equals_an_explicit_fp64_computation(harness: Any, encoder: dict) -> None:
    clip, bindings = encoder["clip"], encoder["bindings"]
    attention = bindings.text_self_attention_for(harness.module("binding_losses.objectives").make_objective("tsam"))
    context_length = bindings.layout.context_length
    ids = [int(entry[0]) for entry in clip.tokenize(PROMPT)["t5xxl"][0]]
    start = context_length - len(ids)
    assert start == (0 if encoder["arch"] == "flux" else 77)  # SD3: after the CLIP-L‖G chunk
    assert attention.shape == (context_length, context_length) and attention.dtype == torch.float32
    assert not attention[:start].any() and not attention[:, :start].any()
    expected, hidden = explicit_t5(clip.cond_stage_model.t5xxl.transformer.state_dict(), ids, encoder["heads"])
    conditioning = _encode(harness, clip)[0][0][0, start:]
    assert torch.allclose(conditioning.double(), hidden, atol=1e-4, rtol=1e-3)  # the encoder ComfyUI ran
    block = attention[start:, start:].double()
    assert torch.allclose(block.sum(dim=-1), torch.ones(len(ids), dtype=torch.float64), atol=1e-5)
    assert torch.allclose(block, expected, atol=1e-5, rtol=0), (block - expected).abs().max()  # fp32 vs fp64
    assert block.triu(1).abs().max() > 1e-3  # bidirectional: T5 also attends forwards
    # the prompt tokens the loss reads are the layout's positions, inside the T5 block
    assert min(bindings.layout.prompt_positions) == start and max(bindings.layout.prompt_positions) < context_length


def test_conditioning_is_bit_identical_with_and_without_the_side_pass(harness: Any, encoder: dict) -> None:
    clip, bindings = encoder["clip"], encoder["bindings"]
    text_attention = harness.module("attention_patch.text_attention")
    t5 = clip.cond_stage_model.t5xxl
    outputs: list[torch.Tensor] = []
    watch = t5.register_forward_hook(lambda module, args, output: outputs.append(output[0].clone()))
    try:
        before = _encode(harness, clip)
        text_attention.text_self_attention(clip, PROMPT, bindings.table.encoders, bindings.layout.context_length)
        after = _encode(harness, clip)
    finally:
        watch.remove()
    assert torch.equal(before[0][0], after[0][0])
    assert torch.equal(before[0][1]["pooled_output"], after[0][1]["pooled_output"])
    assert len(outputs) == 3 and torch.equal(outputs[0], outputs[1])  # the side pass's own T5 output, too
    assert not any(module._forward_hooks for module in t5.modules())
