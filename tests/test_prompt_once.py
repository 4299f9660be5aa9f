"""The prompt typed once: Parse Bindings encodes it as CLIP Text Encode does, and the guided samplers refuse a positive
conditioning from another prompt before the first step, while every legitimate variation still runs.

Graph tests run API graphs through ComfyUI's real executor on the tiny SD1.5 checkpoint (64 px, 2 steps).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

PROMPT = "a pink sunflower and a yellow flamingo"
OTHER = "a red car and a white sheep"
LONG = PROMPT + ", in a lush tropical garden with tall palm trees and hanging vines" * 6
TEXTS = (PROMPT, "a (pink:1.3) sunflower and a ((yellow)) flamingo", LONG)


def _encode(harness: Any, clip: Any, text: str) -> list:
    with torch.inference_mode():
        return harness.node("CLIPTextEncode").encode(clip, text)[0]


def _parse(harness: Any, clip: Any, text: str) -> Any:
    with torch.inference_mode():
        return harness.module("nodes.parse_node").parse_and_encode(clip, text)


def _assert_same_conditioning(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs) == 1
    assert torch.equal(ours[0][0], theirs[0][0])
    assert ours[0][1].keys() == theirs[0][1].keys()
    for key, value in theirs[0][1].items():
        assert torch.equal(ours[0][1][key], value) if torch.is_tensor(value) else ours[0][1][key] == value, key


@pytest.mark.parametrize("text", TEXTS, ids=["plain", "weights", "over-75-tokens"])
def test_conditioning_is_bit_identical_to_clip_text_encode_sd15(harness, sd15, text):
    result = _parse(harness, sd15[1], text)
    _assert_same_conditioning(result.conditioning, _encode(harness, sd15[1], text))
    if text == LONG:
        assert result.conditioning[0][0].shape[1] == 154
        assert result.bindings.fingerprint.context_length == 154


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_conditioning_is_bit_identical_to_clip_text_encode_sd2_sdxl(harness, family, request):
    clip = request.getfixturevalue(family)[1]
    for text in (TEXTS[1], LONG):
        _assert_same_conditioning(_parse(harness, clip, text).conditioning, _encode(harness, clip, text))


def test_conditioning_is_bit_identical_with_an_embedding(harness, tiny_checkpoint, tmp_path):
    import comfy.sd
    import comfy.utils
    import folder_paths

    comfy.utils.save_torch_file({"emb_params": torch.randn(2, 768, generator=torch.Generator().manual_seed(0))},
                                str(tmp_path / "tinyemb.safetensors"))
    path = folder_paths.get_full_path("checkpoints", tiny_checkpoint)
    with torch.inference_mode():
        clip = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, embedding_directory=[str(tmp_path)])[1]
    text = "a pink embedding:tinyemb sunflower and a yellow flamingo"
    result = _parse(harness, clip, text)
    _assert_same_conditioning(result.conditioning, _encode(harness, clip, text))
    without = _encode(harness, clip, "a pink sunflower and a yellow flamingo")
    assert result.conditioning[0][0].shape == without[0][0].shape
    assert not torch.equal(result.conditioning[0][0], without[0][0])  # the embedding's two vectors are in


def test_tsam_text_attention_is_computed_only_for_tsam(harness, sd15):
    objectives = harness.module("binding_losses.objectives")
    bindings = _parse(harness, sd15[1], PROMPT).bindings
    assert bindings.text_self_attention is None and not bindings._lazy  # the parse pays nothing for T-SAM
    assert bindings.text_self_attention_for(objectives.make_objective("syngen")) is None
    attention = bindings.text_self_attention_for(objectives.make_objective("tsam"))
    assert attention.shape == (77, 77)
    assert torch.allclose(attention.sum(-1), torch.ones(77), atol=1e-4)
    assert bindings.text_self_attention_for(objectives.make_objective("tsam")) is attention  # once


def test_node_shows_the_parse_in_plain_words(harness, sd15):
    node = harness.node("ParseBindings")
    with torch.inference_mode():
        out = node.parse(sd15[1], "a red car that is not blue and a white sheep", "robust", "en_core_web_sm", "")
    text = out["ui"]["binding_parse"][0]
    assert "car: red" in text and "sheep: white" in text
    assert "Negated: 'blue' on 'car'" in text
    assert "<-" not in text and "@" not in text  # no position notation in the box
    assert "<-" in out["result"][1]  # the positions stay in the preview output
    with torch.inference_mode():
        empty = node.parse(sd15[1], "", "robust", "en_core_web_sm", "")["ui"]["binding_parse"][0]
        fallback = node.parse(sd15[1], PROMPT, "robust", "fallback", "")["ui"]["binding_parse"][0]
    assert "No bindings" in empty
    assert "simple built-in parser" in fallback and "sunflower: pink" in fallback


# ---------------------------------------------------------------------------------------------------------------
# The fingerprint on real conditioning.


def test_matching_entry_picks_the_parsed_prompt_among_several(harness, sd15):
    prompt_match = harness.module("guidance.prompt_match")
    bindings = _parse(harness, sd15[1], PROMPT).bindings
    ours, other = _encode(harness, sd15[1], PROMPT), _encode(harness, sd15[1], OTHER)
    combined = harness.node("ConditioningCombine").combine(other, ours)[0]
    chosen = prompt_match.matching_entry(bindings.fingerprint, combined, PROMPT)
    assert chosen is combined[1]
    with pytest.raises(harness.module("guidance.errors").BindingGuidanceError) as error:
        prompt_match.matching_entry(bindings.fingerprint, other + other, PROMPT)
    message = str(error.value)
    assert "'a pink sunflower and a yellow flamingo'" in message and "none of its 2 entries" in message
    assert "conditioning' output to 'positive'" in message


def test_weights_typed_in_one_box_only_still_match(harness, sd15):
    prompt_match = harness.module("guidance.prompt_match")
    fingerprint = _parse(harness, sd15[1], PROMPT).bindings.fingerprint
    for text in ("a (pink:1.5) sunflower and a (yellow:0.8) flamingo", "a ((pink)) sunflower and a yellow flamingo"):
        assert prompt_match.row_distance(fingerprint, _encode(harness, sd15[1], text)[0][0]) < 1e-4
    for text in ("a yellow sunflower and a pink flamingo", PROMPT + ", highly detailed", OTHER):
        assert prompt_match.row_distance(fingerprint, _encode(harness, sd15[1], text)[0][0]) > \
            prompt_match.MAX_ROW_DISTANCE, text


# ---------------------------------------------------------------------------------------------------------------
# Graphs through the real executor.


def _graph(checkpoint: str, positive: Any = ("10", 2), parse_clip: Any = ("4", 1), prompt: str = PROMPT) -> dict:
    """Single-box form by default: Parse Bindings' conditioning is the positive input of the guided KSampler."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "ParseBindings", "inputs": {"clip": list(parse_clip), "prompt": prompt, "mode": "robust",
                                                         "spacy_model": "en_core_web_sm", "override": ""}},
        "11": {"class_type": "BindingLossConfig", "inputs": {"method": "syngen", "step_size": 20.0,
                                                             "guided_fraction": 0.5, "advanced": "", "weight": 1.0,
                                                             "words": "", "guidance_mode": "faithful"}},
        "3": {"class_type": "BindingGuidedKSampler", "inputs": {
            "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0,
            "model": ["4", 0], "positive": list(positive), "negative": ["7", 0], "latent_image": ["5", 0],
            "bindings": ["10", 0], "config": ["11", 0]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }


def _encoder(text: str, clip: Any = ("4", 1)) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": list(clip)}}


def _reported_nouns(outputs: dict) -> list[str]:
    return [b["noun"] for b in outputs["3"]["binding_report"][0]["bindings"]]


@pytest.fixture(scope="module")
def lora_name(harness, sd15, tmp_path_factory) -> str:
    import folder_paths
    from tiny_lora import build_clip_lora

    folder = tmp_path_factory.mktemp("loras")
    build_clip_lora(sd15[1], folder / "tiny_clip_lora.safetensors", relative=0.05)
    folder_paths.add_model_folder_path("loras", str(folder))
    return "tiny_clip_lora.safetensors"


def test_single_box_runs_and_shows_the_parse(harness, tiny_checkpoint):
    outputs = harness.run_prompt(_graph(tiny_checkpoint))
    assert _reported_nouns(outputs) == ["sunflower", "flamingo"]
    assert "sunflower: pink" in outputs["10"]["binding_parse"][0]


def test_lora_patched_clip_runs(harness, tiny_checkpoint, lora_name):
    graph = _graph(tiny_checkpoint, parse_clip=("12", 1))
    graph["12"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora_name,
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["12", 0]
    assert _reported_nouns(harness.run_prompt(graph)) == ["sunflower", "flamingo"]
    graph["6"] = _encoder(PROMPT, ("12", 1))  # two-node form, both boxes on the LoRA's CLIP
    graph["3"]["inputs"]["positive"] = ["6", 0]
    assert _reported_nouns(harness.run_prompt(graph)) == ["sunflower", "flamingo"]


def test_conditioning_nodes_and_weights_run(harness, tiny_checkpoint):
    graph = _graph(tiny_checkpoint, positive=("23", 0), prompt="a (pink:1.3) sunflower and a yellow flamingo")
    graph["20"] = {"class_type": "ConditioningSetTimestepRange",
                   "inputs": {"conditioning": ["10", 2], "start": 0.0, "end": 1.0}}
    graph["21"] = _encoder(OTHER)
    graph["22"] = {"class_type": "ConditioningSetAreaPercentage", "inputs": {
        "conditioning": ["21", 0], "width": 0.5, "height": 0.5, "x": 0.0, "y": 0.0, "strength": 1.0}}
    graph["24"] = {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["20", 0],
                                                                  "conditioning_from": ["21", 0]}}
    graph["23"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["22", 0],
                                                                   "conditioning_2": ["24", 0]}}
    assert _reported_nouns(harness.run_prompt(graph)) == ["sunflower", "flamingo"]
    graph["6"] = _encoder("a pink sunflower and a (yellow:1.2) flamingo")  # weights in the positive box only
    graph["3"]["inputs"]["positive"] = ["6", 0]
    assert _reported_nouns(harness.run_prompt(graph)) == ["sunflower", "flamingo"]


def test_two_node_mismatch_is_refused_naming_both_prompts(harness, tiny_checkpoint):
    graph = _graph(tiny_checkpoint, positive=("6", 0))
    graph["6"] = _encoder(OTHER)
    with pytest.raises(AssertionError) as error:
        harness.run_prompt(graph)
    message = str(error.value)
    assert "Parse Bindings read 'a pink sunflower and a yellow flamingo'" in message
    assert "'a red car and a white sheep'" in message and "'conditioning' output to 'positive'" in message


def test_custom_sampler_refuses_a_mismatch_before_the_first_step(harness, sd15):
    """The check lives in the sampler's sample(), so SamplerCustom graphs get it too, before any step runs."""
    import comfy.sample
    import comfy.samplers

    sampler_module = harness.module("guidance.sampler")
    objectives = harness.module("binding_losses.objectives")
    inputs = harness.module("guidance.inputs")
    bindings = _parse(harness, sd15[1], PROMPT).bindings
    config = inputs.GuidanceConfig(objective=objectives.make_objective("syngen"))
    model = sd15[0]
    steps: list[int] = []
    latent = torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        sigmas = comfy.samplers.KSampler(model, 2, model.load_device, "euler", "karras", 1.0,
                                         model_options=model.model_options).sigmas
        sampler = sampler_module.BindingGuidedSampler(comfy.samplers.sampler_object("euler"), bindings, config)
        with pytest.raises(harness.module("guidance.errors").BindingGuidanceError, match="Parse Bindings read"):
            comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 1), 5.0, sampler, sigmas,
                                       _encode(harness, sd15[1], OTHER), _encode(harness, sd15[1], ""), latent,
                                       callback=lambda step, *_: steps.append(step), disable_pbar=True, seed=1)
    assert steps == []


def test_custom_sampler_graph_names_both_prompts(harness, tiny_checkpoint):
    graph = _graph(tiny_checkpoint)
    del graph["3"], graph["13"]
    graph.update({
        "6": _encoder(OTHER),
        "20": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "21": {"class_type": "BindingGuidedSampler", "inputs": {"sampler": ["20", 0], "bindings": ["10", 0],
                                                                "config": ["11", 0]}},
        "22": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "23": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 5.0}},
        "24": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "karras", "steps": 2,
                                                          "denoise": 1.0}},
        "25": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["22", 0], "guider": ["23", 0],
                                                                 "sampler": ["21", 0], "sigmas": ["24", 0],
                                                                 "latent_image": ["5", 0]}},
        "26": {"class_type": "PreviewAny", "inputs": {"source": ["25", 0]}},
    })
    with pytest.raises(AssertionError) as error:
        harness.run_prompt(graph)
    assert "Parse Bindings read 'a pink sunflower" in str(error.value)
    assert "'a red car and a white sheep'" in str(error.value)
    graph["23"]["inputs"]["positive"] = ["10", 2]
    harness.run_prompt(graph)


def test_graph_prompt_texts_are_found_upstream() -> None:
    from binding_guidance.nodes.graph_prompts import custom_sampler_positive_texts, ksampler_positive_texts

    graph = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red car", "clip": ["9", 1]}},
        "2": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["1", 0]}},
        "3": {"class_type": "BindingGuidedKSampler", "inputs": {"positive": ["2", 0], "model": ["9", 0]}},
        "4": {"class_type": "BindingGuidedSampler", "inputs": {}},
        "5": {"class_type": "CFGGuider", "inputs": {"positive": ["1", 0]}},
        "6": {"class_type": "SamplerCustomAdvanced", "inputs": {"sampler": ["4", 0], "guider": ["5", 0]}},
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
    }
    assert ksampler_positive_texts(graph, "3") == ("a red car",)
    assert custom_sampler_positive_texts(graph, "4") == ("a red car",)
    assert ksampler_positive_texts(None, "3") == ()


def test_mismatch_message_names_both_prompts_and_the_fix() -> None:
    from binding_guidance.guidance.prompt_match import mismatch_message

    other = mismatch_message(PROMPT, (OTHER + ", " + "very " * 30 + "detailed",), 1)
    assert other.startswith(f"positive: Parse Bindings read '{PROMPT}', but the positive conditioning comes from "
                            "'a red car and a white sheep, very very")
    assert "…'" in other and "Fix: connect Parse Bindings' 'conditioning' output to 'positive'" in other
    same_text = mismatch_message(PROMPT, (PROMPT,), 2)
    assert "same text but was encoded by another CLIP (none of its 2 entries matches)" in same_text
    assert "another prompt or another CLIP" in mismatch_message(PROMPT, (), 1)
