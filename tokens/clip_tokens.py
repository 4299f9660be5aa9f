"""ComfyUI CLIP tokenizer output -> a table of context positions with the original characters of every token.

Input is the real output of ``clip.tokenize(text, return_word_ids=True)``: ``{key: [chunk, ...]}`` with every chunk
a list of ``(token, weight, word_id)``. ``token`` is an int id, or a tensor row for an embedding vector; ``word_id``
is 0 for SOT/EOT/padding. A token's column in the conditioning context is the sum of the earlier chunks' lengths plus
its index in its chunk (``chunk * 77 + index`` for standard chunks), so moved or split groups are taken from the
output as they are, never recomputed.

Character spans come from aligning the decoded BPE pieces with the prompt text (``char_align``). No torch or
ComfyUI import happens at module import time.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ..parsers.errors import PromptError, check_text
from .char_align import bpe_target_stream, piece_spans
from .prompt_text import comfy_groups

TokenKind = Literal["start", "end", "pad", "text", "embedding", "template"]
"""``template``: a chat-template token around the prompt (Qwen encoders)."""

DEFAULT_START_ID = 49406
DEFAULT_END_ID = 49407
_KEY_PREFERENCE = ("l", "g", "h")
_MISSING = object()


@dataclass(frozen=True)
class ClipToken:
    """One column of the conditioning context."""

    chunk: int
    index: int
    """Index inside its chunk (0..76 for standard chunks)."""
    position: int
    """Column in the conditioning context: offset of the chunk plus ``index``."""
    token_id: int | None
    """BPE id; ``None`` for an embedding vector."""
    piece: str
    """BPE piece (``"kered</w>"``), special token text, or ``"<embedding:name#k>"``."""
    word_id: int
    """ComfyUI's word id: 1-based index of the tokenized group; 0 for SOT/EOT/padding."""
    weight: float
    kind: TokenKind
    start: int | None = None
    """Start of the original-text span this token came from (``None`` for specials and embeddings)."""
    end: int | None = None

    @property
    def is_special(self) -> bool:
        """SOT, EOT, padding or an embedding vector (anything not read from prompt characters)."""
        return self.kind != "text"

    @property
    def span(self) -> tuple[int, int] | None:
        return None if self.start is None or self.end is None else (self.start, self.end)


@dataclass(frozen=True)
class TokenTable:
    """All tokens of a prompt in context order, plus the chunk geometry."""

    text: str
    """The original prompt text (with ComfyUI syntax)."""
    tokens: tuple[ClipToken, ...]
    chunk_lengths: tuple[int, ...]
    encoders: tuple[str, ...]
    """Keys of the tokenizer output that were checked to share this layout (``("g", "l")`` for SDXL)."""
    warnings: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[ClipToken]:
        return iter(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, position: int) -> ClipToken:
        return self.tokens[position]

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_lengths)

    @property
    def chunk_length(self) -> int:
        """Length of the first chunk (77 for SD1/SD2/SDXL)."""
        return self.chunk_lengths[0] if self.chunk_lengths else 0

    @property
    def context_length(self) -> int:
        """Total number of context columns (``num_chunks * 77`` normally)."""
        return sum(self.chunk_lengths)

    def prompt_positions(self, *, include_embeddings: bool = True) -> tuple[int, ...]:
        """Positions of every real prompt token (text pieces, and embedding vectors unless excluded)."""
        kinds = ("text", "embedding") if include_embeddings else ("text",)
        return tuple(t.position for t in self.tokens if t.kind in kinds)

    def positions_for_chars(self, original_indices: Sequence[int] | set[int]) -> tuple[int, ...]:
        """Positions of the text tokens whose original span contains any of ``original_indices``."""
        wanted = set(original_indices)
        if not wanted:
            return ()
        lo, hi = min(wanted), max(wanted)
        out = []
        for tok in self.tokens:
            if tok.start is None or tok.end is None or tok.end <= lo or tok.start > hi:
                continue
            if any(i in wanted for i in range(tok.start, tok.end)):
                out.append(tok.position)
        return tuple(out)


# --- tokenizer resolution and decoding -------------------------------------------------------------------------


def _find_sd_tokenizer(tokenizer: Any, key: str) -> Any | None:
    """Find the per-encoder ``SDTokenizer`` (the object with ``inv_vocab``) for output key ``key``."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "inv_vocab"):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)  # a comfy.sd.CLIP
    if inner is not None and inner is not tokenizer and hasattr(inner, "tokenize_with_weights"):
        return _find_sd_tokenizer(inner, key)
    for name in (f"clip_{key}", key, getattr(tokenizer, "clip", None)):
        if isinstance(name, str):
            cand = getattr(tokenizer, name, None)
            if cand is not None and hasattr(cand, "inv_vocab"):
                return cand
    for value in vars(tokenizer).values() if hasattr(tokenizer, "__dict__") else ():
        if hasattr(value, "inv_vocab"):
            return value
    return None


@lru_cache(maxsize=1)
def _default_inv_vocab() -> dict[int, str]:
    """CLIP BPE vocabulary from ComfyUI's ``comfy/sd1_tokenizer`` (found without importing comfy)."""
    spec = importlib.util.find_spec("comfy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Cannot decode token ids: pass the tokenizer (or CLIP object) to token_table().")
    vocab_path = Path(next(iter(spec.submodule_search_locations))) / "sd1_tokenizer" / "vocab.json"
    with open(vocab_path, encoding="utf-8") as fh:
        vocab = json.load(fh)
    return {v: k for k, v in vocab.items()}


def _is_id(token: Any) -> bool:
    return isinstance(token, numbers.Integral) and not isinstance(token, bool)


# --- layout checks ---------------------------------------------------------------------------------------------


def _layout_signature(chunks: Sequence[Sequence[Any]], key: str) -> list[tuple[int, tuple]]:
    sig = []
    for chunk in chunks:
        entries = []
        for entry in chunk:
            if len(entry) < 3:
                raise ValueError(
                    f"tokenizer output '{key}' has no word ids; call clip.tokenize(text, return_word_ids=True)"
                )
            token, _, word_id = entry[0], entry[1], entry[2]
            if word_id == 0:
                entries.append((0, "special"))
            elif _is_id(token):
                entries.append((int(word_id), int(token)))
            else:
                entries.append((int(word_id), "embedding"))
        sig.append((len(chunk), tuple(entries)))
    return sig


def _pick_key(output: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    keys = tuple(output.keys())
    if not keys:
        raise ValueError("empty tokenizer output")
    primary = next((k for k in _KEY_PREFERENCE if k in output), keys[0])
    ref = _layout_signature(output[primary], primary)
    for key in keys:
        if key != primary and _layout_signature(output[key], key) != ref:
            raise ValueError(
                f"encoders '{primary}' and '{key}' produced different token layouts; positions would be ambiguous"
            )
    return primary, (primary, *tuple(k for k in keys if k != primary))

# --- public API ------------------------------------------------------------------------------------------------


def token_table(
    tokenizer_output: Mapping[str, Any],
    text: str,
    tokenizer: Any = None,
    *,
    disable_weights: bool = False,
) -> TokenTable:
    """Build the position table for ``text`` from ``clip.tokenize(text, return_word_ids=True)``.

    ``tokenizer`` (a ComfyUI CLIP, ``clip.tokenizer`` or a single ``SDTokenizer``) decodes ids and tells whether
    ``embedding:`` references are active; without it ComfyUI's bundled CLIP vocabulary is used. Pass the same
    ``disable_weights`` the output was produced with. Raises ``ValueError`` when the encoders of a multi-encoder
    output (SDXL ``g``/``l``) disagree on positions, ``parsers.PromptError`` when ``text`` is not valid text.
    """
    if not isinstance(tokenizer_output, Mapping):
        raise TypeError("tokenizer_output must be the dict returned by clip.tokenize(text, return_word_ids=True)")
    check_text(text, "prompt")
    key, encoders = _pick_key(tokenizer_output)
    chunks = tokenizer_output[key]
    sd_tok = _find_sd_tokenizer(tokenizer, key)
    inv_vocab: Mapping[int, str] = getattr(sd_tok, "inv_vocab", None) or _default_inv_vocab()
    start_id = getattr(sd_tok, "start_token", DEFAULT_START_ID)
    end_id = getattr(sd_tok, "end_token", DEFAULT_END_ID)
    emb_dir = getattr(sd_tok, "embedding_directory", _MISSING)
    embeddings_active = emb_dir is not None  # unknown (no tokenizer): assume a real CLIP with an embeddings folder

    warnings: list[str] = []
    raw, chunk_lengths = _token_rows(chunks, inv_vocab, start_id, end_id)
    text_rows = [r for r in raw if r["kind"] == "text"]
    pieces = [r["piece"] for r in text_rows]
    spans, exact = piece_spans(
        text, bpe_target_stream(pieces), len(pieces), embeddings=embeddings_active, disable_weights=disable_weights
    )
    if not exact:
        warnings.append(
            "prompt text and CLIP pieces differ (unicode normalisation or unexpected syntax); "
            "spans of the differing characters are approximate"
        )
    for row, span in zip(text_rows, spans, strict=True):
        row["start"], row["end"] = span if span is not None else (None, None)
        if span is None:
            warnings.append(f"token '{row['piece']}' at position {row['position']} maps to no prompt characters")

    warnings.extend(_name_embeddings(raw, text, embeddings_active, disable_weights))
    tokens = tuple(ClipToken(**row) for row in raw)
    return TokenTable(text, tokens, chunk_lengths, encoders, tuple(warnings))


def _token_rows(
    chunks: Sequence[Sequence[Any]], inv_vocab: Mapping[int, str], start_id: int, end_id: int
) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """One row per tokenizer entry (kind, id, piece, position, word id, weight), and each chunk's length."""
    raw: list[dict[str, Any]] = []
    offset = 0
    chunk_lengths = []
    emb_counter: dict[int, int] = {}
    for c, chunk in enumerate(chunks):
        seen_end = False
        for i, entry in enumerate(chunk):
            token, weight, word_id = entry[0], float(entry[1]), int(entry[2])
            row: dict[str, Any] = {"chunk": c, "index": i, "position": offset + i, "word_id": word_id, "weight": weight}
            if word_id == 0:
                tid = int(token) if _is_id(token) else None
                if i == 0 and tid == start_id:
                    kind = "start"
                elif tid == end_id and not seen_end:
                    kind, seen_end = "end", True
                else:
                    kind = "pad"
                row.update(kind=kind, token_id=tid, piece=inv_vocab.get(tid, f"<{tid}>") if tid is not None else "")
            elif _is_id(token):
                tid = int(token)
                row.update(kind="text", token_id=tid, piece=inv_vocab.get(tid, f"<{tid}>"))
            else:
                k = emb_counter.get(word_id, 0)
                emb_counter[word_id] = k + 1
                row.update(kind="embedding", token_id=None, piece=f"<embedding#{word_id}.{k}>")
            raw.append(row)
        chunk_lengths.append(len(chunk))
        offset += len(chunk)
    return raw, tuple(chunk_lengths)


def _name_embeddings(raw: list[dict[str, Any]], text: str, active: bool, disable_weights: bool) -> list[str]:
    """Label embedding vectors with their names; report references ComfyUI dropped (no such file)."""
    if not active:
        return []
    present = {r["word_id"] for r in raw if r["kind"] == "embedding"}
    names: dict[int, str] = {}
    missing: list[str] = []
    word_id = 1  # ComfyUI numbers every tokenized group; a missing embedding adds no group
    for group in comfy_groups(text, disable_weights=disable_weights):
        if group.kind == "text":
            word_id += 1
        elif word_id in present:
            names[word_id] = group.fallback_name or group.text
            word_id += 1
        else:
            missing.append(group.fallback_name or group.text)
    for r in raw:
        if r["kind"] == "embedding" and r["word_id"] in names:
            k = r["piece"].rsplit(".", 1)[1].rstrip(">")
            r["piece"] = f"<embedding:{names[r['word_id']]}#{k}>"
    return [f"embedding '{name}' was not found; ComfyUI ignores it" for name in missing]


def tokenize_prompt(clip: Any, text: str, **tokenize_kwargs: Any) -> dict:
    """``clip.tokenize(text, **tokenize_kwargs)``, with text ComfyUI's tokenizer cannot read refused as a
    ``parsers.PromptError`` naming the ``prompt`` input and the fix (invalid Unicode, parentheses nested too deep,
    an ``embedding:`` name ComfyUI's embedding lookup fails on)."""
    check_text(text, "prompt")  # before ComfyUI's tokenizer, which fails with a TypeError on invalid text
    try:
        return clip.tokenize(text, **tokenize_kwargs)
    except RecursionError as exc:  # ComfyUI's token_weights recurses once per "(" level
        raise PromptError("prompt: parentheses are nested too deeply for ComfyUI's tokenizer (it recurses once per "
                          "level, up to Python's recursion limit); remove some '(' / ')' or escape them as "
                          "\\( \\).") from exc
    except IndexError as exc:  # sd1_clip._try_get_embedding indexes the name's first word, even when it has none
        raise PromptError("prompt: ComfyUI's tokenizer cannot read an 'embedding:' here (it found no embedding name "
                          "right after the colon); write 'embedding:name' with the file name directly after "
                          "'embedding:', or remove 'embedding:' (escape brackets after it as \\( \\)).") from exc


def token_table_for_clip(clip: Any, text: str, **tokenize_kwargs: Any) -> TokenTable:
    """Tokenize ``text`` with a ComfyUI ``CLIP`` object exactly as CLIPTextEncode does, and build its table.

    The table addresses the conditioning context: CLIP chunks, T5's tokens for a Flux.1 or Chroma CLIP, the T5
    segment of SD3's concatenated context, or Z-Image's templated Qwen3 tokens.

    Raises ``parsers.PromptError`` for text ComfyUI cannot tokenize (see :func:`tokenize_prompt`).
    """
    output = tokenize_prompt(clip, text, return_word_ids=True, **tokenize_kwargs)
    disable_weights = bool(tokenize_kwargs.get("disable_weights", False))
    from .qwen_tokens import QWEN_KEYS, qwen_token_table
    from .t5_tokens import T5_KEY, sd3_token_table, t5_token_table

    if any(key in output for key in QWEN_KEYS):  # Z-Image: the templated prompt, every token a context column
        return qwen_token_table(output, text, clip)
    if T5_KEY in output and "g" in output:  # SD3: CLIP-L‖G chunks then T5 along the sequence
        return sd3_token_table(output, text, clip, disable_weights=disable_weights)
    if T5_KEY in output:  # Flux.1: the context is T5's output; CLIP-L gives only the pooled vector
        return t5_token_table(output, text, clip, disable_weights=disable_weights)
    return token_table(output, text, clip, disable_weights=disable_weights)
