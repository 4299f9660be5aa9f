"""The text of the positive prompt a sampler receives, read from the queued graph (for the mismatch message).

The conditioning tensor does not carry its text, so a sampler node that refuses a positive conditioning finds the
prompt by walking the queued API graph (ComfyUI's hidden ``PROMPT`` input) upstream from its positive input to the
text encoders. Best effort: a text that comes from another node's output is not followed, and nothing is found
for a hand-made conditioning.
"""

from __future__ import annotations

from typing import Any

TEXT_INPUTS = ("text", "prompt", "text_g", "text_l")
"""Inputs that hold a prompt on the text-encoder nodes (CLIP Text Encode, its SDXL variant, Parse Bindings)."""
NOT_CONDITIONING = frozenset({"clip", "model", "vae", "latent_image", "samples", "sigmas", "noise", "sampler"})
"""Linked inputs never followed upstream: they cannot carry a positive prompt."""
MAX_NODES = 64


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def texts_upstream(graph: dict, link: Any) -> tuple[str, ...]:
    """Prompt texts of the text encoders that feed ``link`` (``[node_id, slot]``), nearest first, without repeats."""
    found: list[str] = []
    queue, seen = [link], set()
    while queue and len(seen) < MAX_NODES:
        current = queue.pop(0)
        if not _is_link(current) or current[0] in seen or current[0] not in graph:
            continue
        seen.add(current[0])
        inputs = graph[current[0]].get("inputs", {})
        if "clip" in inputs:  # a text encoder: its own text is the prompt
            found += [inputs[name] for name in TEXT_INPUTS if isinstance(inputs.get(name), str)]
            continue
        queue += [value for name, value in inputs.items() if name not in NOT_CONDITIONING and _is_link(value)]
    return tuple(dict.fromkeys(text for text in found if text.strip()))


def ksampler_positive_texts(graph: Any, node_id: Any) -> tuple[str, ...]:
    """Prompt texts feeding the ``positive`` input of sampler node ``node_id``."""
    if not isinstance(graph, dict) or str(node_id) not in graph:
        return ()
    return texts_upstream(graph, graph[str(node_id)].get("inputs", {}).get("positive"))


def custom_sampler_positive_texts(graph: Any, node_id: Any) -> tuple[str, ...]:
    """Prompt texts of the positive conditioning that reaches the SamplerCustom(Advanced) using SAMPLER ``node_id``."""
    if not isinstance(graph, dict):
        return ()
    texts: list[str] = []
    for node in graph.values():
        inputs = node.get("inputs", {})
        if inputs.get("sampler") != [str(node_id), 0]:
            continue
        guider = inputs.get("guider")
        if _is_link(guider) and guider[0] in graph:
            inputs = graph[guider[0]].get("inputs", {})
        texts += texts_upstream(graph, inputs.get("positive", inputs.get("conditioning")))
    return tuple(dict.fromkeys(texts))
