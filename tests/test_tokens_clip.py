"""tokens.clip_tokens and tokens.align against ComfyUI's real SD1 tokenizer: plain prompts and prompt syntax
(weights, escapes, brackets) (no weights needed)."""

from __future__ import annotations

import pytest
from binding_guidance.binding_losses.types import TokenBinding
from binding_guidance.tokens import strip_comfy_syntax
from devkit.comfy_env import bootstrap_comfy
from devkit.token_layouts import layout_for, table_for

bootstrap_comfy()
import comfy.sd1_clip as sd1_clip  # noqa: E402


@pytest.fixture(scope="module")
def sd1() -> sd1_clip.SD1Tokenizer:
    return sd1_clip.SD1Tokenizer()


# --- plain prompts ---------------------------------------------------------------------------------------------


def test_plain_prompt_positions(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a pink sunflower and a yellow flamingo"
    res, table, _ = layout_for(sd1, text, [("sunflower", "pink"), ("flamingo", "yellow")])
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)), TokenBinding((7,), ((6,),)))
    assert res.layout.prompt_positions == (1, 2, 3, 4, 5, 6, 7)
    assert res.layout.context_length == 77
    assert res.warnings == ()
    assert [t.kind for t in table.tokens[:9]] == ["start"] + ["text"] * 7 + ["end"]
    assert all(t.kind == "pad" for t in table.tokens[9:])
    assert table[3].span == (7, 16) and table[3].piece == "sunflower</w>"
    assert table[0].is_special and table[0].span is None


def test_multi_piece_word(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a checkered cat"
    res, table, _ = layout_for(sd1, text, [("cat", "checkered")])
    assert res.layout.bindings == (TokenBinding((4,), ((2, 3),)),)
    assert (table[2].piece, table[3].piece) == ("chec", "kered</w>")
    assert table[2].span == (2, 6) and table[3].span == (6, 11)


def test_spec_example_positions(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a purple dog and a green bench on the street,snowy driving scene"
    res, table, _ = layout_for(sd1, text, [("dog", "purple"), ("bench", "green")])
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)), TokenBinding((7,), ((6,),)))
    assert table[10].piece == "street</w>" and table[11].piece == ",</w>"


def test_repeated_words_bind_by_span(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a red car and a red bike"
    res, _, _ = layout_for(sd1, text, [("car", ("red", 0)), ("bike", ("red", 1))])
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)), TokenBinding((7,), ((6,),)))


def test_hyphenated_modifier(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a black-and-white cat"
    res, table, _ = layout_for(sd1, text, [("cat", "black-and-white")])
    assert [t.piece for t in table.tokens[2:7]] == ["black</w>", "-</w>", "and</w>", "-</w>", "white</w>"]
    assert res.layout.bindings == (TokenBinding((7,), ((2, 3, 4, 5, 6),)),)
    # a parser that only gives "black" gets only that piece
    res2, _, _ = layout_for(sd1, text, [("cat", "black")])
    assert res2.layout.bindings == (TokenBinding((7,), ((2,),)),)


def test_multiword_modifier_and_negation(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a light blue car that is not red"
    res, _, _ = layout_for(sd1, text, [("car", "light blue", "red", {"negated": ("red",)})])
    assert res.layout.bindings == (TokenBinding((4,), ((2, 3),)),)
    assert res.entities[0].skipped == ("red",)
    res2, _, _ = layout_for(sd1, text, [("car", "light blue", "red", {"negated": ("red",)})], skip_negated=False)
    assert res2.layout.bindings == (TokenBinding((4,), ((2, 3), (8,))),)


# --- weights, escapes, brackets --------------------------------------------------------------------------------


def test_weighted_prompt(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a (pink:1.3) sunflower and a ((yellow)) flamingo"
    res, table, clean = layout_for(sd1, text, [("sunflower", "pink"), ("flamingo", "yellow")])
    assert clean.text == "a pink sunflower and a yellow flamingo"
    assert res.layout.bindings == (TokenBinding((3,), ((2,),)), TokenBinding((7,), ((6,),)))
    assert table[2].weight == pytest.approx(1.3) and table[2].span == (3, 7)
    assert table[6].weight == pytest.approx(1.21) and text[slice(*table[6].span)] == "yellow"


def test_group_weight_and_glued_parens(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "(light blue:0.8) car, a(red)cube"
    res, table, clean = layout_for(sd1, text, [("car", "light blue"), ("cube", "red")])
    assert clean.text == "light blue car, a red cube"
    assert [t.piece for t in table.tokens[1:8]] == [
        "light</w>",
        "blue</w>",
        "car</w>",
        ",</w>",
        "a</w>",
        "red</w>",
        "cube</w>",
    ]
    assert res.layout.bindings == (TokenBinding((3,), ((1, 2),)), TokenBinding((7,), ((6,),)))


def test_escaped_parens_are_tokens(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = r"a \(red\) car"
    res, table, clean = layout_for(sd1, text, [("car", "red")])
    assert clean.text == "a (red) car"
    assert [t.piece for t in table.tokens[1:6]] == ["a</w>", "(</w>", "red</w>", ")</w>", "car</w>"]
    assert table[2].span == (3, 4)  # the parenthesis, not the backslash
    assert res.layout.bindings == (TokenBinding((5,), ((3,),)),)
    assert all(t.weight == 1.0 for t in table.tokens)


def test_square_brackets_are_literal(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a [red] car"
    res, table, clean = layout_for(sd1, text, [("car", "red")])
    assert clean.text == "a [red] car"  # ComfyUI has no [] syntax: CLIP reads the brackets
    assert [t.piece for t in table.tokens[1:6]] == ["a</w>", "[</w>", "red</w>", "]</w>", "car</w>"]
    assert all(t.weight == 1.0 for t in table.tokens)
    assert res.layout.bindings == (TokenBinding((5,), ((3,),)),)


def test_whitespace_and_unicode(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a   Crème\n\n brûlée   and  a naïve   İstanbul cat"
    clean = strip_comfy_syntax(text)
    assert clean.text == "a Crème\nbrûlée and a naïve İstanbul cat"
    res, table, _ = layout_for(sd1, text, [("brûlée", "Crème"), ("cat", "naïve", "İstanbul")])
    for tok in table.tokens:
        if tok.kind == "text":
            assert tok.span is not None
    creme = [t for t in table.tokens if t.span and t.start >= 4 and t.end <= 9]
    assert creme and {t.position for t in creme} == set(res.layout.bindings[0].modifiers[0])
    istanbul = res.layout.bindings[1].modifiers[1]
    assert len(istanbul) == 3  # "i", combining dot, "stanbul": the lowercased İ is two characters
    assert text[table[istanbul[0]].start : table[istanbul[-1]].end] == "İstanbul"


def test_disable_weights(sd1: sd1_clip.SD1Tokenizer) -> None:
    text = "a (red:1.2) car"
    table = table_for(sd1, text, disable_weights=True)
    assert [t.piece for t in table.tokens[1:9]] == [
        "a</w>",
        "(</w>",
        "red</w>",
        ":</w>",
        "1</w>",
        ".</w>",
        "2</w>",
        ")</w>",
    ]
    assert table[3].span == (3, 6)
