"""Generated prompts through the real nodes and the guided sampler on the tiny model (issue #16).

A small derandomized sample of ``fuzz_inputs.guided_prompts``, each with the next (method, guidance mode, sampler)
of ``fuzz_inputs.guided_variant``: Parse Bindings → Binding Loss Config → Binding-Guided KSampler. Every output
is finite, a prompt without bindings samples exactly like KSampler, and invalid text is the node's PromptError
(``fuzz_checks.check_guided``). ``benchmarks/fuzz.py`` sends every 50th of its 10,000 prompts this way.
"""

from __future__ import annotations

from typing import Any

import pytest
from devkit.fuzz_checks import INPUT_ERROR, NONFINITE_CONDITIONING, PARSED, GuidedRig, check_guided
from devkit.fuzz_inputs import guided_prompts, guided_variant
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def rig(harness: Any, sd15: tuple) -> GuidedRig:
    model, clip, _ = sd15
    return GuidedRig.load(harness.nodes, harness.pack, model, clip)


@settings(max_examples=6, deadline=None, derandomize=True, database=None, print_blob=True,
          phases=[Phase.explicit, Phase.generate],  # shrinking a sampled failure would take many minutes
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prompt=guided_prompts, index=st.integers(0, 59))
def test_generated_prompts_sample_with_every_method(rig: GuidedRig, prompt: str, index: int) -> None:
    assert check_guided(rig, prompt, guided_variant(index)) in (PARSED, INPUT_ERROR, NONFINITE_CONDITIONING)


def test_invalid_prompt_and_override_are_the_nodes_input_errors(rig: GuidedRig) -> None:
    syngen, divide_and_bind = guided_variant(0), guided_variant(2)
    assert check_guided(rig, "a red \ud800 car", syngen) == INPUT_ERROR
    assert check_guided(rig, "a red car", syngen, mode="override", override="bike: red") == INPUT_ERROR
    assert check_guided(rig, "a red car", syngen, mode="override", override="car: red") == PARSED
    assert check_guided(rig, "a car", divide_and_bind) == INPUT_ERROR  # tv_bind needs a modifier: the sampler says so


def test_embedding_name_comfyui_cannot_tokenize_is_a_prompt_error(rig: GuidedRig) -> None:
    """ComfyUI's own embedding lookup (sd1_clip._try_get_embedding) raises IndexError on this text: the parse and
    Parse Bindings' own CONDITIONING encode both refuse it as the node's PromptError naming ``prompt`` and the fix."""
    assert check_guided(rig, "embedding:(🏎🎛🎛)", guided_variant(0)) == INPUT_ERROR
    import importlib

    parse_node = importlib.import_module(rig.prompt_error.__module__.rsplit(".", 2)[0] + ".nodes.parse_node")
    for call in (parse_node.parse_and_encode, parse_node.encode_prompt):
        with pytest.raises(rig.prompt_error, match=r"^prompt: .*write 'embedding:name'"):
            call(rig.clip, "a red car, embedding:(🏎🎛🎛)")
