"""tokens.prompt_text: ComfyUI syntax stripping, checked against ComfyUI's own weight parser."""

from __future__ import annotations

import random

import pytest
from binding_guidance.tokens.prompt_text import comfy_groups, strip_comfy_syntax, weighted_segments
from devkit.comfy_env import bootstrap_comfy

bootstrap_comfy()
import comfy.sd1_clip as sd1_clip  # noqa: E402


def _comfy_segments(text: str) -> list[tuple[str, float]]:
    """What ComfyUI's tokenizer computes before splitting on embeddings."""
    pairs = sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0)
    return [(sd1_clip.unescape_important(t), w) for t, w in pairs]


CASES = [
    "a pink sunflower",
    "a (pink:1.3) sunflower",
    "((red)) car",
    "(a b:0.8) c",
    "[word] and [[two]]",
    r"a \(literal\) paren",
    r"\\(x)",
    "(unclosed",
    "stray) (paren",
    "a)b(c)d(",
    "(:1.3) x",
    "(x:abc)",
    "(x:1:2)",
    "((a:1.5) b:0.5)",
    "a(red)cube",
    "tabs\tand\nnewlines  here",
    "",
]


@pytest.mark.parametrize("text", CASES)
def test_segments_match_comfyui(text: str) -> None:
    mine = [(s.text, s.weight) for s in weighted_segments(text)]
    assert mine == _comfy_segments(text)


def test_segments_match_comfyui_random() -> None:
    rng = random.Random(1234)
    alphabet = ["a", "b", " ", "(", ")", ":", "1.5", "\\", "\\(", "\\)", "x:0.7", "\n"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        segs = weighted_segments(text)
        assert [(s.text, s.weight) for s in segs] == _comfy_segments(text), text
        for seg in segs:  # every tracked character points at the same character of the original
            for ch, origin in zip(seg.text, seg.source, strict=True):
                assert origin is not None and text[origin] == ch, (text, seg)


def test_disable_weights_keeps_parentheses() -> None:
    segs = weighted_segments("a (red:1.2) car", disable_weights=True)
    assert [(s.text, s.weight) for s in segs] == [("a (red:1.2) car", 1.0)]


def test_strip_weights_and_nesting() -> None:
    clean = strip_comfy_syntax("a (pink:1.3) sunflower and ((yellow)) flamingo")
    assert clean.text == "a pink sunflower and yellow flamingo"
    i = clean.text.index("pink")
    assert clean.original_span(i, i + 4) == (3, 7)
    j = clean.text.index("yellow")
    assert clean.original[slice(*clean.original_span(j, j + 6))] == "yellow"
    assert clean.weights[i] == pytest.approx(1.3)
    assert clean.weights[j] == pytest.approx(1.21)


def test_multiword_weight_group_and_glued_groups() -> None:
    clean = strip_comfy_syntax("(light blue:0.8) car, a(red)cube")
    assert clean.text == "light blue car, a red cube"
    assert clean.original_indices(0, 10) == tuple(range(1, 6)) + tuple(range(6, 11))
    # the space between "a" and "red" was inserted: ComfyUI tokenizes them separately
    k = clean.text.index("a red")
    assert clean.char_map[k + 1] is None


def test_escaped_parens_and_brackets_stay_text() -> None:
    clean = strip_comfy_syntax(r"a \(tag\) [dog]")
    assert clean.text == "a (tag) [dog]"
    assert clean.char_map[2] == 3  # "(" maps to the parenthesis after the backslash
    assert clean.char_map[6] == 8


def test_embeddings_removed_and_named() -> None:
    clean = strip_comfy_syntax("embedding:style a photo of embedding:foo, cat\nembedding:bar")
    assert clean.text == "a photo of , cat"
    assert clean.embeddings == ("style", "foo", "bar")
    k = clean.text.index("cat")
    assert clean.original[slice(*clean.original_span(k, k + 3))] == "cat"


def test_embedding_not_after_space_is_text() -> None:
    clean = strip_comfy_syntax("a,embedding:foo cat")
    assert clean.text == "a,embedding:foo cat"
    assert clean.embeddings == ()


def test_embedding_inside_weight_group() -> None:
    groups = comfy_groups("(embedding:foo red:1.2) car")
    assert [(g.kind, g.text) for g in groups] == [("embedding", "foo"), ("text", "red"), ("text", " car")]
    assert groups[1].weight == pytest.approx(1.2)
    assert strip_comfy_syntax("(embedding:foo red:1.2) car").text == "red car"


def test_embeddings_off_means_text() -> None:
    groups = comfy_groups("a embedding:foo cat", embeddings=False)
    assert [(g.kind, g.text) for g in groups] == [("text", "a"), ("text", "embedding:foo cat")]


def test_whitespace_collapsed() -> None:
    clean = strip_comfy_syntax("  a   red\t\tcar \n\n blue  sky  ")
    assert clean.text == "a red car\nblue sky"
    assert clean.original[clean.char_map[clean.text.index("car")]] == "c"


def test_span_validation() -> None:
    clean = strip_comfy_syntax("a cat")
    with pytest.raises(ValueError):
        clean.original_indices(3, 99)
