"""ComfyUI T5 tokenizer output (sentencepiece) -> a table of context positions, for Flux.1's text stream.

ComfyUI's T5-XXL tokenizer puts the whole prompt in one chunk (no 77-token window; Flux pads it to 256 tokens,
and a longer prompt makes a longer context), without a start token, with ``</s>`` (id 1) after the prompt and
padding with id 0. Column k of the Flux context is token k. Each text token's span in the original prompt comes
from aligning the sentencepiece pieces (``▁`` marks a word start) with the text ComfyUI handed to the tokenizer,
as for CLIP. A piece that is only ``▁`` (sentencepiece's separate word-start token) holds no prompt characters: it
stays a prompt token (it is in ``prompt_positions``) but belongs to no word.
No torch or ComfyUI import happens at module import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .char_align import piece_spans
from .clip_tokens import ClipToken, TokenTable, _find_sd_tokenizer

T5_KEY = "t5xxl"
T5_END_ID = 1
WORD_START = "▁"


def _target_stream(pieces: Sequence[str]) -> tuple[str, list[tuple[int, ...]]]:
    """Decoded text of sentencepiece ``pieces`` (lowercased, no word-start marks) and each character's piece."""
    chars: list[str] = []
    owners: list[tuple[int, ...]] = []
    for k, piece in enumerate(pieces):
        for ch in piece.replace(WORD_START, "").lower():
            if not ch.isspace():
                chars.append(ch)
                owners.append((k,))
    return "".join(chars), owners


def t5_token_table(
    tokenizer_output: Mapping[str, Any], text: str, tokenizer: Any, *, disable_weights: bool = False
) -> TokenTable:
    """The position table of ``text`` from ``clip.tokenize(text, return_word_ids=True)``'s T5 part.

    ``tokenizer`` is the ComfyUI CLIP (or its tokenizer); its T5 tokenizer's vocabulary decodes the ids.
    """
    chunks = tokenizer_output[T5_KEY]
    sd_tok = _find_sd_tokenizer(tokenizer, T5_KEY)  # Flux: ``.t5xxl``; Chroma (pixart_t5): ``.clip_t5xxl``
    inv_vocab: Mapping[int, str] = getattr(sd_tok, "inv_vocab", None) or {}
    rows: list[dict[str, Any]] = []
    offset = 0
    for c, chunk in enumerate(chunks):
        seen_end = False
        for i, entry in enumerate(chunk):
            token, weight, word_id = entry[0], float(entry[1]), int(entry[2])
            tid = int(token) if isinstance(token, int) else None
            row: dict[str, Any] = {"chunk": c, "index": i, "position": offset + i, "word_id": word_id,
                                   "weight": weight, "token_id": tid}
            if tid is None:
                row.update(kind="embedding", piece=f"<embedding#{word_id}>")
            elif word_id == 0:
                kind = "end" if tid == T5_END_ID and not seen_end else "pad"
                seen_end = seen_end or kind == "end"
                row.update(kind=kind, piece=inv_vocab.get(tid, f"<{tid}>"))
            else:
                row.update(kind="text", piece=inv_vocab.get(tid, f"<{tid}>"))
            rows.append(row)
        offset += len(chunk)
    text_rows = [r for r in rows if r["kind"] == "text"]
    pieces = [r["piece"] for r in text_rows]
    spans, exact = piece_spans(
        text, _target_stream(pieces), len(pieces), embeddings=False, disable_weights=disable_weights
    )
    warnings: list[str] = []
    if not exact:
        warnings.append("prompt text and T5 pieces differ (normalisation or unknown characters); "
                        "spans of the differing characters are approximate")
    for row, span in zip(text_rows, spans, strict=True):
        row["start"], row["end"] = span if span is not None else (None, None)
        if span is None and row["piece"] != WORD_START:
            warnings.append(f"token '{row['piece']}' at position {row['position']} maps to no prompt characters")
    tokens = tuple(ClipToken(**row) for row in rows)
    return TokenTable(text, tokens, tuple(len(chunk) for chunk in chunks), (T5_KEY,), tuple(warnings))


def sd3_token_table(
    tokenizer_output: Mapping[str, Any], text: str, clip: Any, *, disable_weights: bool = False
) -> TokenTable:
    """SD3's context is [CLIP-L‖G chunks (77 each), T5 tokens] along the sequence. The table addresses the T5
    segment (its positions shifted past the CLIP chunks); the CLIP columns stay in the table as unaddressed
    padding. Without a T5 encoder the context is the CLIP chunks alone and the CLIP table is returned; without
    CLIP-L and G it is T5 alone."""
    from .clip_tokens import token_table

    model = getattr(clip, "cond_stage_model", None)
    has_clip = any(getattr(model, name, None) is not None for name in ("clip_l", "clip_g"))
    if getattr(model, T5_KEY, None) is None:
        return token_table({k: v for k, v in tokenizer_output.items() if k != T5_KEY}, text, clip,
                           disable_weights=disable_weights)
    t5 = t5_token_table(tokenizer_output, text, clip, disable_weights=disable_weights)
    if not has_clip:
        return t5
    clip_lengths = [len(chunk) for chunk in tokenizer_output["l"]]
    offset = sum(clip_lengths)
    unaddressed = tuple(
        ClipToken(chunk=c, index=i, position=sum(clip_lengths[:c]) + i, token_id=None, piece="<CLIP segment>",
                  word_id=0, weight=1.0, kind="pad")
        for c, length in enumerate(clip_lengths) for i in range(length)
    )
    shifted = tuple(
        ClipToken(**{**vars(token), "chunk": token.chunk + len(clip_lengths), "position": token.position + offset})
        for token in t5.tokens
    )
    return TokenTable(text, unaddressed + shifted, (*clip_lengths, *t5.chunk_lengths), ("l", "g", T5_KEY),
                      t5.warnings)
