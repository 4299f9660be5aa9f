"""Tokenizer pieces -> the prompt characters they came from.

The text ComfyUI hands to the tokenizer is rebuilt with original indices (``prompt_text.comfy_groups``) and aligned
with the pieces' decoded text; characters that do not match one-to-one (CLIP lowercases, drops whitespace, may
normalise unicode) are shared out between their matched neighbours. No torch or ComfyUI import at module import.
"""

from __future__ import annotations

import codecs
import difflib
from collections.abc import Sequence
from functools import lru_cache

from .prompt_text import comfy_groups


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet (bytes mapped to printable characters, as in GPT-2/CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _piece_bytes(piece: str) -> bytes:
    core = piece[:-4] if piece.endswith("</w>") else piece
    table = _byte_decoder()
    out = bytearray()
    for ch in core:
        if ch in table:
            out.append(table[ch])
        else:
            out.extend(ch.encode("utf-8"))
    return bytes(out)


def source_stream(text: str, embeddings: bool, disable_weights: bool) -> tuple[str, list[int | None]]:
    """Non-whitespace characters ComfyUI hands to CLIP, lowercased, with their original indices."""
    chars: list[str] = []
    src: list[int | None] = []
    for group in comfy_groups(text, embeddings=embeddings, disable_weights=disable_weights):
        if group.kind != "text":
            continue
        for ch, origin in zip(group.text, group.source, strict=True):
            if ch.isspace():
                continue
            for low in ch.lower():
                chars.append(low)
                src.append(origin)
    return "".join(chars), src


def bpe_target_stream(pieces: Sequence[str]) -> tuple[str, list[tuple[int, ...]]]:
    """Decoded text of CLIP byte-level BPE pieces and, per decoded character, the pieces that hold its bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars: list[str] = []
    owners: list[tuple[int, ...]] = []
    pending: list[int] = []
    for k, piece in enumerate(pieces):
        for byte in _piece_bytes(piece):
            pending.append(k)
            out = decoder.decode(bytes([byte]))
            if out:
                holders = tuple(sorted(set(pending)))
                for ch in out:
                    chars.append(ch)
                    owners.append(holders)
                pending = []
    tail = decoder.decode(b"", final=True)
    if tail:
        holders = tuple(sorted(set(pending))) or ((len(pieces) - 1,) if pieces else ())
        for ch in tail:
            chars.append(ch)
            owners.append(holders)
    return "".join(chars), owners



def align_streams(source: str, target: str) -> list[tuple[int, ...]]:
    """For every target character, the source characters it stands for."""
    if source == target:
        return [(j,) for j in range(len(target))]
    matched: list[int | None] = [None] * len(target)
    matcher = difflib.SequenceMatcher(None, source, target, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            matched[block.b + k] = block.a + k
    out: list[tuple[int, ...]] = [() for _ in target]
    j = 0
    while j < len(target):
        if matched[j] is not None:
            out[j] = (matched[j],)
            j += 1
            continue
        run_start = j
        while j < len(target) and matched[j] is None:
            j += 1
        prev_src = matched[run_start - 1] if run_start > 0 else -1
        next_src = matched[j] if j < len(target) else len(source)
        lo, hi = prev_src + 1, next_src  # unmatched source chars between the anchors
        n, m = j - run_start, hi - lo
        if m <= 0:
            continue
        for r in range(n):  # share the unmatched source chars out in order
            a = lo + (r * m) // n
            b = max(lo + ((r + 1) * m) // n, a + 1)
            out[run_start + r] = tuple(range(a, min(b, hi)))
    return out


def piece_spans(
    text: str, target: tuple[str, Sequence[tuple[int, ...]]], num_pieces: int, *, embeddings: bool,
    disable_weights: bool,
) -> tuple[list[tuple[int, int] | None], bool]:
    """Original span of every tokenizer piece, and whether the alignment was exact. ``target`` is the pieces'
    decoded text with, per character, the pieces that hold it (:func:`bpe_target_stream` for CLIP)."""
    source, src_index = source_stream(text, embeddings, disable_weights)
    decoded, owners = target
    hits: list[set[int]] = [set() for _ in range(num_pieces)]
    for j, src_chars in enumerate(align_streams(source, decoded)):
        for k in owners[j]:
            for s in src_chars:
                origin = src_index[s]
                if origin is not None:
                    hits[k].add(origin)
    return [(min(h), max(h) + 1) if h else None for h in hits], source == decoded
