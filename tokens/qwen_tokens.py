"""ComfyUI Qwen tokenizer output (byte-level BPE in a chat template) -> context positions, for Z-Image and Qwen-Image.

Z-Image's text encoder (ComfyUI's ``z_image``: Qwen3-4B, second-to-last hidden layer) encodes the prompt inside
the chat template ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`` and keeps every token: the
context's column k is token k, so the template's prefix tokens shift every prompt position (by 3 for the default
template). ComfyUI tokenizes the whole templated text with weights disabled (``(word:1.2)`` stays literal text) and
without padding, start or end tokens. Qwen-Image's encoder (``qwen_image``: Qwen2.5-VL-7B, last layer) uses a
template with a system turn and drops everything before the prompt (:func:`context_start`); the suffix tokens stay.

The prompt's tokens are found in the decoded token stream, not by counting: the template's prefix and suffix are
fixed text around the prompt, and a token is a prompt token when all its characters lie between them (a prompt
that starts with a newline merges it with the prefix's newline into one template token, which holds no letters).
A whitespace-only prompt token (``Ġ``) stays a prompt token but belongs to no word. The prompt tokens' spans in
the original prompt come from the same character alignment as CLIP's. No torch or ComfyUI import happens at
module import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..parsers.errors import PromptError
from .char_align import bpe_target_stream, piece_spans
from .clip_tokens import ClipToken, TokenTable, _find_sd_tokenizer

Z_IMAGE_KEY = "qwen3_4b"
QWEN_IMAGE_KEY = "qwen25_7b"
QWEN_KEYS = (Z_IMAGE_KEY, QWEN_IMAGE_KEY)
"""Tokenizer output keys of the Qwen encoders: Z-Image's Qwen3-4B, Qwen-Image's Qwen2.5-VL-7B."""
WHITESPACE_PIECES = "ĠĊĉč"
"""Byte-level BPE's printable stand-ins for space, newline, tab and carriage return."""
IM_START, USER, NEWLINE = 151644, 872, 198
"""Qwen ids of ``<|im_start|>``, ``user`` and ``\\n``."""


def context_start(key: str, ids: Sequence[int]) -> int:
    """The first token that is a context column. Z-Image keeps every token (0). Qwen-Image's encoder
    (``QwenImageTEModel.encode_token_weights``) drops the system turn: its context starts at the second
    ``<|im_start|>``, or 3 tokens later when ``user\\n`` follows it (the default template); with no
    ``<|im_start|>`` it keeps the last token only. This mirrors ComfyUI 0.3.75's rule."""
    if key != QWEN_IMAGE_KEY:
        return 0
    starts = [i for i, tid in enumerate(ids) if tid == IM_START][:2]
    end = starts[-1] if starts else -1
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end % len(ids) if ids else 0


def _template_parts(tokenizer: Any) -> tuple[str, str]:
    template = getattr(getattr(tokenizer, "tokenizer", tokenizer), "llama_template", None)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError("The CLIP's Qwen tokenizer has no chat template (llama_template) with one '{}' for the "
                         "prompt; connect the text encoder ComfyUI loads for Z-Image.")
    prefix, suffix = template.split("{}")
    return prefix, suffix


def _prompt_tokens(pieces: Sequence[str], prefix: str, suffix: str) -> tuple[list[int], str, list[tuple[int, ...]]]:
    """The indices of the prompt's tokens (those whose characters all lie between the template's prefix and
    suffix), and the decoded prompt characters (no whitespace) with, per character, the prompt tokens (numbered
    0.. among them) that hold it."""
    decoded, owners = bpe_target_stream(pieces)
    if not (decoded.startswith(prefix) and decoded.endswith(suffix)):
        raise PromptError("prompt: the text encoder did not wrap it in its chat template (Qwen-Image's tokenizer "
                          "takes a prompt that starts with '<|im_start|>' as a template of its own), so its words "
                          "cannot be found between the template's parts; write the prompt without a chat template.")
    region = range(len(prefix), len(decoded) - len(suffix))
    outside = {k for j, held in enumerate(owners) if j not in region for k in held}
    holders = sorted({k for j in region for k in owners[j]} - outside)
    number = {k: n for n, k in enumerate(holders)}
    chars: list[str] = []
    char_owners: list[tuple[int, ...]] = []
    for j in region:
        if decoded[j].isspace():
            continue
        for low in decoded[j].lower():
            chars.append(low)
            char_owners.append(tuple(number[k] for k in owners[j] if k in number))
    return holders, "".join(chars), char_owners


def qwen_token_table(tokenizer_output: Mapping[str, Any], text: str, tokenizer: Any) -> TokenTable:
    """The position table of ``text`` from ``clip.tokenize(text, return_word_ids=True)``'s Qwen part.

    ``tokenizer`` is the ComfyUI CLIP (or its tokenizer): its Qwen tokenizer decodes the ids and its
    ``llama_template`` gives the template's prefix and suffix. Template tokens have kind ``template``.
    """
    key = next(k for k in QWEN_KEYS if k in tokenizer_output)
    chunks = tokenizer_output[key]
    if len(chunks) != 1:
        raise ValueError(f"expected one Qwen token sequence, got {len(chunks)}")
    inv_vocab: Mapping[int, str] = getattr(_find_sd_tokenizer(tokenizer, key), "inv_vocab", None) or {}
    ids = [int(entry[0]) if isinstance(entry[0], int) else -1 for entry in chunks[0]]  # -1: an image embed
    pieces = [inv_vocab.get(tid, "") for tid in ids]
    prefix, suffix = _template_parts(tokenizer)
    holders, target, owners = _prompt_tokens(pieces, prefix, suffix)
    spans, exact = piece_spans(text, (target, owners), len(holders), embeddings=False, disable_weights=True)
    warnings: list[str] = []
    if not exact:
        warnings.append("prompt text and Qwen pieces differ (unicode normalisation or escapes); spans of the "
                        "differing characters are approximate")
    span_of = dict(zip(holders, spans, strict=True))
    first = context_start(key, ids)
    tokens = []
    for i in range(first, len(ids)):
        span, piece, entry = span_of.get(i), pieces[i], chunks[0][i]
        tokens.append(ClipToken(chunk=0, index=i - first, position=i - first, token_id=ids[i], piece=piece,
                                word_id=int(entry[2]), weight=float(entry[1]),
                                kind="text" if i in span_of else "template",
                                start=span[0] if span else None, end=span[1] if span else None))
        if i in span_of and span is None and piece.strip(WHITESPACE_PIECES):
            warnings.append(f"token '{piece}' at position {i - first} maps to no prompt characters")
    if any(i < first for i in holders):
        warnings.append("the text encoder drops the start of the prompt with the template; those words have no "
                        "positions")
    return TokenTable(text, tuple(tokens), (len(tokens),), (key,), tuple(warnings))
