"""Generated inputs for the fuzzing of Parse Bindings and Binding Loss Config (Hypothesis strategies).

Shared by the derandomised tests (``test_parse_robustness.py``, ``test_fuzz_config.py``, ``test_fuzz_guided.py``)
and the full run (``benchmarks/fuzz.py``), so both draw from the same distributions:

- prompts: arbitrary unicode (emoji, control characters, lone surrogates), punctuation only, empty / whitespace,
  ~500 words, nested and malformed ComfyUI weights, escapes, ``embedding:name``, brackets and commas;
- overrides (the Parse Bindings ``override`` input): random text, or entries built from the prompt's own words
  (always valid);
- ``advanced`` text (Binding Loss Config): ``key = value`` lines with known and unknown keys, numbers, NaN, inf,
  huge and tiny values, words, unicode, malformed lines and comments, short and long.

Pure Python (Hypothesis only); ``CAMPAIGNS`` says how a run of N prompts is shared out between the generators.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

from hypothesis import strategies as st

# --- prompts ---------------------------------------------------------------------------------------------------

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
sentence = st.lists(word, min_size=1, max_size=14).map(" ".join)
"""Prompt-like word salad: the shape most real prompts have, so most of these give bindings."""

short_prompts = st.one_of(unicode_text, control_text, mixed_text, punctuation_only, whitespace_only, comfy_syntax,
                          nested_weights, st.just(""))
prompts = st.one_of(unicode_text, control_text, mixed_text, punctuation_only, whitespace_only, st.just(""),
                    comfy_syntax, nested_weights, with_surrogate, sentence)


# --- overrides -------------------------------------------------------------------------------------------------

override_piece = st.one_of(word, st.sampled_from(["!", ":", ";", ",", "\n", " ", "!red", "cat:", ": red", "\\(", "!!",
                                                  "::", "red, , blue", "\t", "\u200b", "🐱:"]),
                           unicode_text.map(lambda s: s[:6]), emoji)
random_override = st.one_of(st.lists(override_piece, max_size=10).map("".join),
                            st.lists(override_piece, min_size=20, max_size=80).map("".join),
                            st.text(max_size=300))


@st.composite
def prompt_and_override(draw: st.DrawFn) -> tuple[str, str, bool]:
    """A prompt, an override, and whether the override must succeed.

    Either random override text against any prompt, or entries that use each ASCII word occurrence of the
    prompt at most once (always valid).
    """
    from binding_guidance.tokens import strip_comfy_syntax

    if draw(st.booleans()):
        prompt = draw(st.one_of(short_prompts, comfy_syntax, with_surrogate, sentence))
        return prompt, draw(random_override), False
    prompt = draw(st.one_of(sentence, comfy_syntax))
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


# --- Binding Loss Config ---------------------------------------------------------------------------------------

METHODS = ("syngen", "syngen_entropy", "divide_and_bind", "attend_and_excite", "tsam")
GUIDANCE_MODES = ("faithful", "fast")
# Keys a user might type: today's hyperparameters of every method and a few misspellings. Keys that no method
# knows (or that a later version renames) still exercise the unknown-key refusal.
ADVANCED_KEYS = (
    "scale_factor", "guided_fraction", "main_factor", "include_entities", "lambda_entropy", "gamma_entropy",
    "entropy_neg_mode", "loss_mode", "tv_variant", "thresholds", "refinement_caps", "bind_weights", "refine",
    "smooth", "softmax_scale", "normalize_eot", "max_refinement_steps", "kernel_size", "sigma", "loss_type", "power",
    "row_weight", "refinement_iterations", "break_iteration", "stop_rule", "measure_after_step", "stop_below",
    "guidance_attention", "cpu_convolution", "Scale_Factor", "scale factor", "scalefactor", "method", "weight",
    "steps", "__class__", "",
)
ADVANCED_VALUES = (
    "0", "1", "-1", "2", "3", "4", "8", "20", "0.5", "1.0", "1e6", "1e30", "-1e30", "1e-30", "1e308", "1e999",
    "inf", "-inf", "+inf", "Infinity", "nan", "NaN", "-nan", "true", "false", "True", "none", "null", "''", '""',
    "'sdpa'", "comfy", "sdpa", "auto", "native", "default", "faithful", "fixed", "robust", "paper", "code", "tv",
    "tv_bind", "as_written", "0.05, 0.5, 0.8", "(1, 5, 10)", "1, 2", "nan, 0.5, 0.8", "inf, inf, inf", "abc", "１２",
    "1_000", " 3 ", "0x10", "9" * 400, "1" * 5000, "-0", "1.", ".5", "5e-324",
)
advanced_key = st.sampled_from(ADVANCED_KEYS) | st.text(st.characters(exclude_characters="=#"), max_size=12)
advanced_value = st.one_of(st.sampled_from(ADVANCED_VALUES), st.floats().map(repr), st.integers().map(str),
                           st.text(max_size=20))
advanced_line = st.one_of(
    st.tuples(advanced_key, advanced_value, st.sampled_from([" = ", "=", "  =  ", " ="])).map(
        lambda kv: f"{kv[0]}{kv[2]}{kv[1]}"),
    st.tuples(advanced_key, advanced_value).map(lambda kv: f"{kv[0]} = {kv[1]}  # a comment"),
    st.sampled_from(["# only a comment", "", "   ", "no equals sign", "= 5", "==", "a = b = c", "#= 1", "\t"]),
    st.text(max_size=40),
)
advanced_text = st.one_of(
    st.tuples(st.sampled_from(ADVANCED_KEYS), advanced_value).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.lists(advanced_line, max_size=6).map("\n".join),
    st.lists(advanced_line, min_size=30, max_size=60).map("\n".join),
    st.lists(advanced_line, max_size=4).map("\r\n".join),
    st.text(max_size=200),
)


@dataclass(frozen=True)
class ConfigCase:
    """The inputs of one Binding Loss Config node (``advanced`` is the fuzzed one)."""

    method: str
    advanced: str
    guidance_mode: str = "faithful"
    step_size: float = 20.0
    guided_fraction: float = 0.5
    weight: float = 1.0
    words: str = ""

    def inputs(self) -> dict:
        return dict(method=self.method, step_size=self.step_size, guided_fraction=self.guided_fraction,
                    advanced=self.advanced, weight=self.weight, words=self.words, guidance_mode=self.guidance_mode)


# Widget values: NaN passes ComfyUI's own min/max check (every comparison with NaN is false), so it reaches the node
# from /prompt; other out-of-range widget values are refused by ComfyUI before the node runs.
config_cases = st.builds(
    ConfigCase,
    method=st.sampled_from(METHODS),
    advanced=advanced_text,
    guidance_mode=st.sampled_from(GUIDANCE_MODES),
    step_size=st.sampled_from([0.0, 5.0, 20.0, 1000.0, math.nan]),
    guided_fraction=st.sampled_from([0.0, 0.5, 1.0, math.nan]),
    weight=st.sampled_from([0.0, 1.0, 100.0, math.nan]),
    words=st.one_of(st.just(""), st.lists(word, max_size=3).map(", ".join), st.text(max_size=20)),
)


# --- the guided sampler ------------------------------------------------------------------------------------------

GUIDED_SAMPLERS = ("euler", "dpmpp_2m", "euler_ancestral", "heun", "ddim", "lms")
guided_prompts = st.one_of(sentence, prompts, comfy_syntax)


def guided_variant(index: int) -> tuple[str, str, str]:
    """(method, guidance_mode, sampler) of the ``index``-th prompt sent through the guided sampler: every method in
    both modes, with the samplers in turn."""
    return (METHODS[index % len(METHODS)], GUIDANCE_MODES[index // len(METHODS) % len(GUIDANCE_MODES)],
            GUIDED_SAMPLERS[index % len(GUIDED_SAMPLERS)])


# --- how a run of N prompts is shared out ------------------------------------------------------------------------


@dataclass(frozen=True)
class Campaign:
    """One kind of generated prompt and how it runs through the pipeline."""

    name: str
    share: float
    """Fraction of all generated prompts."""
    tokenizer: str
    """``"sd1"`` or ``"sdxl"``."""
    modes: tuple[str, ...]
    """Parsers each prompt goes through: ``robust``, ``faithful``, ``fallback`` or ``override``."""


CAMPAIGNS = (
    Campaign("robust_sd1", 0.54, "sd1", ("robust",)),
    Campaign("long_sd1", 0.02, "sd1", ("robust",)),
    Campaign("robust_sdxl", 0.22, "sdxl", ("robust",)),
    Campaign("faithful_fallback", 0.11, "sd1", ("faithful", "fallback")),
    Campaign("override", 0.11, "sd1", ("override",)),
)
CAMPAIGN_STRATEGIES = {
    "robust_sd1": prompts,
    "long_sd1": long_prompt,
    "robust_sdxl": prompts,
    "faithful_fallback": short_prompts | with_surrogate,
    "override": prompt_and_override(),
}


def campaign_sizes(total: int) -> dict[str, int]:
    """How many prompts each campaign draws for ``total`` prompts in all (the counts add up to ``total``)."""
    sizes = {c.name: int(total * c.share) for c in CAMPAIGNS}
    sizes[CAMPAIGNS[0].name] += total - sum(sizes.values())
    return sizes
