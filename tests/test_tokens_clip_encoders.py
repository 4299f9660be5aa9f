"""tokens.clip_tokens and tokens.align against ComfyUI's real tokenizers: embeddings, chunk boundaries, the SDXL and
SD2 encoders, alignment edge cases and previews (no weights needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from binding_guidance.binding_losses.types import TokenBinding
from binding_guidance.tokens import (
    CleanPrompt,
    align_entities,
    describe_layout,
    describe_table,
    strip_comfy_syntax,
    token_table,
    token_table_for_clip,
)
from devkit.comfy_env import bootstrap_comfy
from devkit.token_layouts import Entity, Parsed, Word, ent, layout_for, table_for

bootstrap_comfy()
import comfy.sd1_clip as sd1_clip  # noqa: E402
import comfy.sdxl_clip as sdxl_clip  # noqa: E402

try:
    from comfy.text_encoders import sd2_clip  # 0.3.x layout
except ImportError:  # older trees
    import comfy.sd2_clip as sd2_clip  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def sd1() -> sd1_clip.SD1Tokenizer:
    return sd1_clip.SD1Tokenizer()


# --- embeddings ------------------------------------------------------------------------------------------------


def test_missing_embedding_is_dropped(tmp_path: Path) -> None:
    tok = sd1_clip.SD1Tokenizer(embedding_directory=str(tmp_path))
    text = "a photo of embedding:nosuchthing red cat"
    res, table, clean = layout_for(tok, text, [("cat", "red")])
    assert clean.text == "a photo of red cat"
    assert [t.piece for t in table.tokens[1:6]] == ["a</w>", "photo</w>", "of</w>", "red</w>", "cat</w>"]
    assert res.layout.bindings == (TokenBinding((5,), ((4,),)),)
    assert any("nosuchthing" in msg for msg in table.warnings)


def test_embedding_without_directory_is_text(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "embedding:foo red cat"
    res, table, clean = layout_for(sd1, text, [("cat", "red")])
    assert clean.text == "red cat"  # the parser never sees it...
    assert [t.piece for t in table.tokens[1:5]] == ["embed", "ding</w>", ":</w>", "foo</w>"]  # ...CLIP does
    assert res.layout.bindings == (TokenBinding((6,), ((5,),)),)
    assert res.layout.prompt_positions == (1, 2, 3, 4, 5, 6)


def test_real_embedding_vectors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"clip_l": torch.zeros(2, 768)}, str(tmp_path / "myemb.safetensors"))
    tok = sd1_clip.SD1Tokenizer(embedding_directory=str(tmp_path))
    text = "a embedding:myemb, red (cat:1.1)"
    res, table, clean = layout_for(tok, text, [("cat", "red")])
    assert clean.text == "a , red cat"
    kinds = [t.kind for t in table.tokens[:8]]
    assert kinds == ["start", "text", "embedding", "embedding", "text", "text", "text", "end"]
    assert table[2].piece == "<embedding:myemb#0>" and table[2].span is None and table[2].is_special
    assert table[4].piece == ",</w>" and text[slice(*table[4].span)] == ","
    assert res.layout.bindings == (TokenBinding((6,), ((5,),)),)
    assert res.layout.prompt_positions == (1, 2, 3, 4, 5, 6)
    res2 = align_entities(Parsed(clean.text, ()), clean, table, include_embeddings=False)
    assert res2.layout.prompt_positions == (1, 4, 5, 6)


# --- chunks ----------------------------------------------------------------------------------------------------


def test_group_moved_whole_to_next_chunk(sd1: sd1_clip.SD1Tokenizer) -> None:
    filler = " ".join(["photo"] * 74)
    text = f"{filler} (red car:1.2) and a blue bike"
    res, table, _ = layout_for(sd1, text, [("car", "red"), ("bike", "blue")])
    assert table.chunk_lengths == (77, 77) and table.context_length == 154
    # chunk 0: SOT + 74 x photo, then EOT and one pad: the 2-token group did not fit and moved whole
    assert [t.kind for t in table.tokens[74:78]] == ["text", "end", "pad", "start"]
    assert table[78].chunk == 1 and table[78].index == 1
    assert res.layout.bindings == (TokenBinding((79,), ((78,),)), TokenBinding((83,), ((82,),)))
    assert 75 not in res.layout.prompt_positions and 77 not in res.layout.prompt_positions
    assert len(res.layout.prompt_positions) == 74 + 6


def test_long_group_split_at_boundary(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = " ".join(["photo"] * 80) + " of a red car"
    res, table, _ = layout_for(sd1, text, [("car", "red")])
    assert table[75].kind == "text" and table[76].kind == "end" and table[77].kind == "start"
    assert table[78].piece == "photo</w>" and table[78].position == 78
    assert res.layout.bindings == (TokenBinding((86,), ((85,),)),)
    assert res.layout.prompt_positions == tuple(range(1, 76)) + tuple(range(78, 87))


# --- other encoders --------------------------------------------------------------------------------------------


def test_sdxl_g_and_l_share_positions() -> None:
    tok = sdxl_clip.SDXLTokenizer()
    text = "a (pink:1.3) sunflower and a checkered flamingo"
    out = tok.tokenize_with_weights(text, return_word_ids=True)
    assert set(out) == {"g", "l"}
    table = token_table(out, text, tok)
    assert table.encoders == ("l", "g")
    clean = strip_comfy_syntax(text)
    parsed = Parsed(clean.text, (ent(clean.text, "sunflower", "pink"), ent(clean.text, "flamingo", "checkered")))
    res = align_entities(parsed, clean, table)
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)), TokenBinding((8,), ((6, 7),)))
    assert table[10].kind == "pad"  # clip_g pads with id 0 and clip_l with EOT; both are padding
    assert out["g"][0][10][0] == 0 and out["l"][0][10][0] == 49407


def test_sdxl_layout_mismatch_rejected() -> None:
    tok = sdxl_clip.SDXLTokenizer()
    out = tok.tokenize_with_weights("a red car", return_word_ids=True)
    shifted = dict(out)
    shifted["g"] = [[out["g"][0][0], (320, 1.0, 1), *out["g"][0][1:-1]]]
    with pytest.raises(ValueError, match="different token layouts"):
        token_table(shifted, "a red car", tok)


def test_sd2_pads_with_zero_but_keeps_exclamation() -> None:
    tok = sd2_clip.SD2Tokenizer()
    text = "a red car!~"  # "!" before "~" is BPE id 0, the same id SD2 pads with
    out = tok.tokenize_with_weights(text, return_word_ids=True)
    assert set(out) == {"h"}
    table = token_table(out, text, tok)
    assert [t.kind for t in table.tokens[:8]] == ["start", "text", "text", "text", "text", "text", "end", "pad"]
    assert table[4].token_id == 0 and table[4].piece == "!" and table[4].span == (9, 10)
    assert table[5].piece == "~</w>" and table[5].span == (10, 11)
    assert table[7].token_id == 0
    clean = strip_comfy_syntax(text)
    res = align_entities(Parsed(clean.text, (ent(clean.text, "car", "red"),)), clean, table)
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)),)
    assert res.layout.prompt_positions == (1, 2, 3, 4, 5)


def test_clip_object_convenience(sd1: sd1_clip.SD1Tokenizer) -> None:
    import comfy.sd

    clip = comfy.sd.CLIP(no_init=True)  # how CLIP.clone() builds one; only the tokenizer is needed here
    clip.tokenizer = sd1
    clip.tokenizer_options = {}
    table = token_table_for_clip(clip, "a (pink:1.3) sunflower")
    assert [t.position for t in table.tokens if t.kind == "text"] == [1, 2, 3]
    assert table.text == "a (pink:1.3) sunflower"


def test_default_vocab_without_tokenizer(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a checkered cat"
    out = sd1.tokenize_with_weights(text, return_word_ids=True)
    assert [t.piece for t in token_table(out, text).tokens[1:5]] == ["a</w>", "chec", "kered</w>", "cat</w>"]


def test_requires_word_ids(sd1: sd1_clip.SD1Tokenizer) -> None:
    out = sd1.tokenize_with_weights("a cat")
    with pytest.raises(ValueError, match="return_word_ids"):
        token_table(out, "a cat", sd1)


# --- alignment edge cases and previews -------------------------------------------------------------------------


def test_noun_without_tokens_is_dropped(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a red car"
    table = table_for(sd1, text)
    clean = CleanPrompt(text, text + " x", (*range(len(text)), None, None))  # "x" maps to nothing
    parsed = Parsed(clean.text, (Entity(Word("x", 10, 11), (Word("red", 2, 5),)), ent(clean.text, "car", "red")))
    res = align_entities(parsed, clean, table)
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)),)
    assert any("'x'" in msg and "dropped" in msg for msg in res.warnings)


def test_prompt_mismatch_raises(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a (red:1.2) car"
    with pytest.raises(ValueError, match="clean text"):
        align_entities(Parsed(text, ()), strip_comfy_syntax(text), table_for(sd1, text))


def test_previews(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a (checkered:1.2) cat"
    res, table, _ = layout_for(sd1, text, [("cat", "checkered")])
    preview = describe_table(table)
    assert "kered</w>" in preview and "w=1.2" in preview and "padding token(s) at 6-76" in preview
    summary = describe_layout(res.layout, table)
    assert "'cat'@4" in summary and "'checkered'@2,3" in summary


def test_random_prompts_spans_are_exact(sd1: sd1_clip.SD1Tokenizer) -> None:
    """Every text piece of random ASCII prompts maps back onto the characters it was made from."""
    rng = random.Random(7)
    words = [
        "red",
        "checkered",
        "photorealistic",
        "cat",
        "8k",
        "(",
        ")",
        "(blue:1.4)",
        "\\(",
        "[x]",
        ",",
        "-",
        "don't",
        "embedding:foo",
        "  ",
        "\n",
        "a",
        "((big))",
        ":",
        "x:2",
    ]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        table = table_for(sd1, text)
        assert not table.warnings, (text, table.warnings)
        for tok in table.tokens:
            if tok.kind == "text":
                core = tok.piece.removesuffix("</w>")
                assert text[tok.start : tok.end].lower() == core, (text, tok)


def test_with_real_parser(sd1: sd1_clip.SD1Tokenizer) -> None:
    """End to end with the pack's own parser (spaCy when installed, the rule fallback otherwise)."""
    from binding_guidance.parsers import parse_bindings

    text = "a (pink:1.3) sunflower and a ((yellow)) flamingo, a red car and a red bike"
    clean = strip_comfy_syntax(text)
    parsed = parse_bindings(clean.text)
    res = align_entities(parsed, clean, table_for(sd1, text))
    found = {b.noun: b.modifiers for b in res.layout.bindings}
    assert found[(3,)] == ((2,),) and found[(7,)] == ((6,),)  # sunflower <- pink, flamingo <- yellow
    assert found[(11,)] == ((10,),) and found[(15,)] == ((14,),)  # car <- first red, bike <- second red
