"""Binding-Guided KSampler and Binding-Guided Sampler: thin nodes over ``guidance.sampler``."""

from __future__ import annotations

import dataclasses
from typing import Any

import comfy.samplers
import comfy.utils
import latent_preview

from ..attention_patch import require_supported
from ..guidance.errors import BindingGuidanceError
from ..guidance.inputs import GuidanceConfig, PromptBindings
from ..guidance.model_loading import classic_model
from ..guidance.previews import attention_panels, guidance_note, last_maps, loss_curve, word_maps
from ..guidance.prompt_match import matching_entry
from ..guidance.sample import guided_sample
from ..guidance.sampler import BindingGuidedSampler
from .graph_prompts import custom_sampler_positive_texts, ksampler_positive_texts

CATEGORY = "sampling/binding_guidance"

_GRAPH = {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
"""Hidden inputs: the queued graph, read only to name the positive prompt in a mismatch message."""
_GUIDANCE_INPUTS = {
    "bindings": ("BINDINGS", {"tooltip": "Entities and modifiers from the Parse Bindings node whose 'conditioning' output is the positive input. A positive from another prompt is refused before sampling."}),
    "config": ("BINDING_CONFIG", {"tooltip": "Method and hyperparameters from a Binding Loss Config node."}),
}


def check_bindings_match(bindings: PromptBindings, positive: Any) -> None:
    """Refuse a positive conditioning that does not come from the prompt Parse Bindings read (before sampling)."""
    entry = matching_entry(bindings.fingerprint, positive, bindings.prompt, bindings.positive_prompts)
    context_length = int(entry[0].shape[1])
    positions = [p for binding in bindings.layout.bindings for p in binding.positions]
    if positions and max(positions) >= context_length:
        raise BindingGuidanceError(
            f"bindings: token position {max(positions)} does not exist in the positive conditioning "
            f"({context_length} tokens). Connect Parse Bindings' conditioning output to 'positive'."
        )


def with_graph_prompts(bindings: PromptBindings, texts: tuple[str, ...]) -> PromptBindings:
    """``bindings`` that also know the positive prompt text(s) of the graph, for the mismatch message."""
    return dataclasses.replace(bindings, positive_prompts=texts) if texts else bindings


def word_labels(bindings: PromptBindings) -> dict[tuple[int, ...], str]:
    """Readable names for the words of the layout, taken from the prompt's token table."""
    labels: dict[tuple[int, ...], str] = {}
    table = bindings.table
    for binding in bindings.layout.bindings:
        for word in (binding.noun, *binding.modifiers):
            if table is not None:
                pieces = [table[p].piece for p in word if 0 <= p < len(table)]
                labels[tuple(word)] = "".join(pieces).replace("</w>", " ").replace("▁", " ").strip()
    return labels


def binding_summary(bindings: PromptBindings) -> list[dict]:
    """The bindings as the sampler used them: words and token positions (negated modifiers already left out)."""
    labels = word_labels(bindings)
    return [
        {
            "noun": labels.get(tuple(binding.noun), ""),
            "modifiers": [labels.get(tuple(word), "") for word in binding.modifiers],
            "noun_positions": list(binding.noun),
            "modifier_positions": [list(word) for word in binding.modifiers],
        }
        for binding in bindings.layout.bindings
    ]


class BindingGuidedKSampler:
    """KSampler with binding guidance: same inputs and output, plus BINDINGS and BINDING_CONFIG."""

    DESCRIPTION = (
        "A KSampler that keeps each modifier on its own noun. During the first guided steps it records the model's "
        "attention of image to text (cross-attention on UNets, joint attention on DiTs) and nudges the latent so every modifier's map overlaps its noun's map (SynGen and "
        "related methods). With a prompt that has no bindings it samples exactly like KSampler."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("LATENT", "attention_maps", "loss_curve")
    OUTPUT_TOOLTIPS = (
        "The denoised latent.",
        "One panel row per binding: the noun's cross-attention map, then each modifier's, at the last guided step.",
        "The binding loss at each guided step.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent: SD1.x, SD2.x, SDXL, Flux.1, Chroma, SD3.x, Z-Image or Qwen-Image. Other families are refused before sampling, naming the family."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "The random seed used for creating the noise."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of denoising steps."}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale, as in KSampler."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "The sampling algorithm. uni_pc, uni_pc_bh2, dpm_fast and dpm_adaptive cannot carry a latent update and are refused."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "The noise schedule."}),
                "positive": ("CONDITIONING", {"tooltip": "Parse Bindings' 'conditioning' output (the prompt typed once). A conditioning from another prompt is refused before sampling."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative conditioning."}),
                "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "The amount of denoising applied, as in KSampler."}),
                **_GUIDANCE_INPUTS,
            },
            "hidden": _GRAPH,
        }

    def sample(self, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: Any,
               negative: Any, latent_image: dict, denoise: float, bindings: PromptBindings,
               config: GuidanceConfig, prompt: Any = None, unique_id: Any = None) -> dict:
        require_supported(model)  # refuse unsupported DiT families by name before anything is loaded
        bindings = with_graph_prompts(bindings, ksampler_positive_texts(prompt, unique_id))
        check_bindings_match(bindings, positive)
        model = classic_model(model)  # guidance needs weights that a backward pass can use (no dynamic VRAM)
        result = guided_sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image["samples"], bindings, config, denoise=denoise,
                               noise_mask=latent_image.get("noise_mask"), batch_index=latent_image.get("batch_index"),
                               callback=latent_preview.prepare_callback(model, steps),
                               disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
        out = latent_image.copy()
        out["samples"] = result.samples
        report = result.report
        maps = last_maps(report)
        panels = attention_panels(maps, bindings.layout, word_labels(bindings), note=guidance_note(report))
        curve = loss_curve(report)
        summary = report.to_dict() if report is not None else {}
        summary["maps"] = word_maps(maps, bindings.layout)
        summary["bindings"] = binding_summary(bindings)
        return {"ui": {"binding_report": [summary]}, "result": (out, panels, curve)}


class BindingGuidedSamplerNode:
    """SAMPLER in, SAMPLER out: adds binding guidance to SamplerCustom / SamplerCustomAdvanced graphs."""

    DESCRIPTION = (
        "Wraps a SAMPLER (from KSamplerSelect) so that it applies binding guidance. Use it with SamplerCustom or "
        "SamplerCustomAdvanced and any guider that has a positive conditioning."
    )
    CATEGORY = CATEGORY
    FUNCTION = "wrap"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("The same sampling algorithm, with binding guidance.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI API name)
        return {"required": {"sampler": ("SAMPLER", {"tooltip": "A sampler from KSamplerSelect."}), **_GUIDANCE_INPUTS},
                "hidden": _GRAPH}

    def wrap(self, sampler: Any, bindings: PromptBindings, config: GuidanceConfig, prompt: Any = None,
             unique_id: Any = None) -> tuple[BindingGuidedSampler]:
        # The positive conditioning reaches the sampler inside SamplerCustom; it is checked there, before step 1.
        bindings = with_graph_prompts(bindings, custom_sampler_positive_texts(prompt, unique_id))
        return (BindingGuidedSampler(sampler, bindings, config),)
