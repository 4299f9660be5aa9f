"""How well the bindings' fingerprint tells the parsed prompt's conditioning from another prompt's.

For each text encoder, Parse Bindings' fingerprint of a prompt is compared (``prompt_match.row_distance``: the
largest relative L2 distance over the kept rows) with positive conditionings made by ComfyUI's own nodes:
- the same prompt under every legitimate variation: CLIP Text Encode itself, a CLIP patched by a random LoRA
  (LoraLoader's path, updates of 0.2%, 1% and 5% of each patched weight's norm) while Parse Bindings reads the
  unpatched CLIP (with the same CLIP on both sides the distance is 0), a ``(word:w)`` weight
  typed in the positive box only, ConditioningSetTimestepRange, ConditioningCombine (other entry first),
  ConditioningConcat (the prompt first) and ConditioningSetArea;
- other prompts: colours swapped, one noun changed, a suffix added, a word dropped, an unrelated prompt.

Encoders: the tests' tiny SD1.5 (full-size CLIP-L, random), SD2 (full-size OpenCLIP-H) and SDXL (CLIP-L +
OpenCLIP-bigG) checkpoints, and a full-size CLIP-L built with ComfyUI's classes and a CLIP-style random init
(N(0, 0.02) embeddings, PyTorch's default linear init).

    .venv/bin/python benchmarks/prompt_fingerprint.py            # all four encoders
    .venv/bin/python benchmarks/prompt_fingerprint.py --archs sd15 clip-l
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from comfy_env import bootstrap_comfy, register_pack_package  # noqa: E402

LONG_TAIL = ", in a lush tropical garden with tall palm trees and hanging vines" * 6
PROMPTS = {
    "a pink sunflower and a yellow flamingo": {
        "colours swapped": "a yellow sunflower and a pink flamingo",
        "noun changed": "a pink sunflower and a yellow parrot",
        "suffix added": "a pink sunflower and a yellow flamingo, highly detailed",
        "word dropped": "a pink sunflower and a flamingo",
        "unrelated": "a red car and a white sheep",
    },
    "a purple dog and a green bench on the street, snowy driving scene": {
        "colours swapped": "a green dog and a purple bench on the street, snowy driving scene",
        "noun changed": "a purple cat and a green bench on the street, snowy driving scene",
        "suffix added": "a purple dog and a green bench on the street, snowy driving scene at night",
        "word dropped": "a purple dog and a bench on the street, snowy driving scene",
        "unrelated": "a cat and a frog",
    },
    "a pink sunflower and a yellow flamingo" + LONG_TAIL: {
        "colours swapped": "a yellow sunflower and a pink flamingo" + LONG_TAIL,
        "noun changed": "a pink sunflower and a yellow parrot" + LONG_TAIL,
        "suffix added": "a pink sunflower and a yellow flamingo" + LONG_TAIL + ", at dusk",
        "word dropped": "a pink sunflower and a flamingo" + LONG_TAIL,
        "unrelated": "a red car and a white sheep" + LONG_TAIL,
    },
}
LORA_SIZES = (0.002, 0.01, 0.05)
"""Norm of each LoRA update relative to the weight it patches."""
CHECKPOINTS = {"sd15": "sd15_tiny_v1.safetensors", "sd2": "sd2_tiny_v1.safetensors",
               "sdxl": "sdxl_tiny_v1.safetensors"}


def load_clip(arch: str) -> Any:
    """The text encoder of a tiny test checkpoint, or a full-size CLIP-L with a CLIP-style random init."""
    import comfy.sd
    import comfy.supported_models
    from tiny_models import SD15_TINY_UNET, build_tiny_checkpoint

    if arch == "clip-l":
        config = comfy.supported_models.SD15(dict(SD15_TINY_UNET))
        clip = comfy.sd.CLIP(config.clip_target(), tokenizer_data={}, parameters=0)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, param in clip.cond_stage_model.named_parameters():
                if "embedding" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
                elif param.ndim == 2:
                    bound = 1 / math.sqrt(param.shape[1])  # nn.Linear's default (kaiming uniform, a=√5)
                    param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
                elif name.endswith("weight"):
                    param.fill_(1.0)
                else:
                    param.zero_()
        return clip
    path = ROOT / ".cache" / "test-models" / CHECKPOINTS[arch]
    if not path.exists():
        build_tiny_checkpoint(arch, path)
    return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clipvision=False)[1]


def encode(clip: Any, text: str) -> list:
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def same_prompt_variants(clip: Any, prompt: str, lora_dir: Path) -> dict[str, list]:
    """The prompt's positive conditioning as each legitimate variation makes it."""
    import comfy.sd
    import comfy.utils
    import nodes
    from tiny_lora import build_clip_lora

    loras = {relative: comfy.utils.load_torch_file(str(build_clip_lora(clip, lora_dir / f"lora{relative}.safetensors",
                                                                      relative=relative)))
             for relative in LORA_SIZES}
    plain = encode(clip, prompt)
    other = encode(clip, "a photo")
    modifier = prompt.split()[1]
    weighted = {f"(modifier:{w}) in positive only": encode(clip, prompt.replace(modifier, f"({modifier}:{w})", 1))
                for w in (0.8, 1.2, 1.5)}
    return {
        "CLIP Text Encode": plain,
        **{f"LoRA changing weights {r:.1%} (Parse: base CLIP)": encode(
            comfy.sd.load_lora_for_models(None, clip, lora, 0.0, 1.0)[1], prompt) for r, lora in loras.items()},
        **weighted,
        "ConditioningSetTimestepRange": nodes.ConditioningSetTimestepRange().set_range(plain, 0.0, 0.5)[0],
        "ConditioningCombine (other first)": nodes.ConditioningCombine().combine(other, plain)[0],
        "ConditioningConcat (prompt first)": nodes.ConditioningConcat().concat(plain, other)[0],
        "ConditioningSetArea": nodes.ConditioningSetArea().append(plain, 256, 256, 0, 0, 1.0)[0],
    }


def best_distance(prompt_match: Any, fingerprint: Any, conditioning: list) -> float:
    return min(prompt_match.row_distance(fingerprint, prompt_match.context_of(entry)) for entry in conditioning)


def measure(arch: str, parse_node: Any, prompt_match: Any) -> tuple[dict[str, float], dict[str, float], bool]:
    """Largest distance per legitimate variation, smallest per kind of other prompt, and bit-identity."""
    clip = load_clip(arch)
    same: dict[str, float] = {}
    other: dict[str, float] = {}
    identical = True
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for prompt, others in PROMPTS.items():
            result = parse_node.parse_and_encode(clip, prompt)
            reference = encode(clip, prompt)
            identical &= torch.equal(result.conditioning[0][0], reference[0][0]) and all(
                torch.equal(v, reference[0][1][k]) for k, v in result.conditioning[0][1].items() if torch.is_tensor(v))
            fingerprint = result.bindings.fingerprint
            for name, conditioning in same_prompt_variants(clip, prompt, Path(tmp)).items():
                same[name] = max(same.get(name, 0.0), best_distance(prompt_match, fingerprint, conditioning))
            for kind, text in others.items():
                distance = best_distance(prompt_match, fingerprint, encode(clip, text))
                other[kind] = min(other.get(kind, math.inf), distance)
    return same, other, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["sd15", "sd2", "sdxl", "clip-l"],
                        choices=["sd15", "sd2", "sdxl", "clip-l"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    bootstrap_comfy()
    register_pack_package()
    import importlib

    parse_node = importlib.import_module("binding_guidance.nodes.parse_node")
    prompt_match = importlib.import_module("binding_guidance.guidance.prompt_match")
    print(f"threshold MAX_ROW_DISTANCE = {prompt_match.MAX_ROW_DISTANCE}; distance = largest over the kept rows "
          "of what no (word:w) weight explains, relative to the row's distance from the empty prompt (0 = identical)")
    for arch in args.archs:
        same, other, identical = measure(arch, parse_node, prompt_match)
        print(f"\n[{arch}] Parse Bindings' conditioning bit-identical to CLIP Text Encode: {identical}")
        print("  same prompt (largest over 3 prompts):")
        for name, value in same.items():
            print(f"    {name:40s} {value:.4f}")
        print("  other prompt (smallest over 3 prompts):")
        for name, value in other.items():
            print(f"    {name:40s} {value:.4f}")
        limit = prompt_match.MAX_ROW_DISTANCE
        passed = [name for name, value in same.items() if value <= limit]
        print(f"  at the threshold {limit}: {len(passed)}/{len(same)} same-prompt variations pass (refused: "
              f"{', '.join(sorted(set(same) - set(passed))) or 'none'}); "
              f"{sum(v > limit for v in other.values())}/{len(other)} kinds of other prompt are refused")


if __name__ == "__main__":
    main()
