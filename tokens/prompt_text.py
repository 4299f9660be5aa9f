"""ComfyUI prompt syntax -> plain text for the parser, with a map back to the original characters.

Pure Python (no torch, no ComfyUI import). The rules mirror ``SDTokenizer.tokenize_with_weights`` of ComfyUI's
``comfy/sd1_clip.py`` (checked against 0.3.75), step by step, while tracking where every character came from:

1. ``\\(`` and ``\\)`` are escapes: they stay as literal ``(`` / ``)`` and are never syntax.
2. Parentheses group text: ``(x)`` multiplies the weight by 1.1 per level, ``(x:1.3)`` sets it (the part after the
   last ``:`` must parse as a float, otherwise it stays text). The parentheses and ``:weight`` produce no tokens.
   Unbalanced parentheses are handled exactly like ComfyUI's ``parse_parentheses`` (an unclosed ``(`` stays text).
3. Each weighted segment is cut at ``" embedding:"`` / ``"\\nembedding:"`` (and at a segment that starts with
   ``embedding:``). The embedding name is the first whitespace-separated word after the marker; the rest of that
   piece is tokenized as text. ComfyUI retries a name with ``,`` stripped and keeps those commas as text; we assume
   the comma-stripped name is the real one (a file literally named ``name,`` is not supported).
   ``embedding:`` right after other text (``a,embedding:x``) is *not* recognised by ComfyUI and stays text here too.
4. Every resulting piece is tokenized by CLIP on its own, so a segment boundary always separates words.

Not syntax in ComfyUI core, therefore kept as literal text (exactly what CLIP reads):

* ``[word]``: square brackets are plain characters (A1111's de-emphasis is not a ComfyUI feature); CLIP
  tokenizes ``[`` and ``]`` as punctuation tokens.
* ``{a|b}`` wildcards and ``//`` / ``/* */`` comments: the ComfyUI *frontend* rewrites them before queueing a
  prompt from the browser; the backend (and so this layer) only ever sees the result. If such text reaches the
  tokenizer it is ordinary text, and it is kept here as well.
* A backslash before anything other than a parenthesis is an ordinary character.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..parsers.errors import check_text

EMBEDDING_PREFIX = "embedding:"

Source = tuple["int | None", ...]
"""Original-text index of every character (``None`` for characters ComfyUI synthesises, e.g. joining spaces)."""


class _Tracked:
    """A string whose characters each remember their index in the original prompt."""

    __slots__ = ("chars", "src")

    def __init__(self, chars: str, src: Sequence[int | None]) -> None:
        if len(chars) != len(src):
            raise ValueError("character/source length mismatch")
        self.chars = chars
        self.src: tuple[int | None, ...] = tuple(src)

    @classmethod
    def of(cls, text: str) -> _Tracked:
        return cls(text, range(len(text)))

    @classmethod
    def synthetic(cls, text: str) -> _Tracked:
        return cls(text, (None,) * len(text))

    @classmethod
    def join(cls, parts: Iterable[_Tracked]) -> _Tracked:
        parts = list(parts)
        return cls("".join(p.chars for p in parts), tuple(i for p in parts for i in p.src))

    def __len__(self) -> int:
        return len(self.chars)

    def __getitem__(self, key: slice) -> _Tracked:
        return _Tracked(self.chars[key], self.src[key])

    def __add__(self, other: _Tracked) -> _Tracked:
        return _Tracked(self.chars + other.chars, self.src + other.src)

    def replace(self, old: str, new: str, keep: int) -> _Tracked:
        """``str.replace`` (left to right, non-overlapping); each new char takes the source of ``old[keep]``."""
        if old not in self.chars:
            return self
        out: list[_Tracked] = []
        pos = 0
        while True:
            hit = self.chars.find(old, pos)
            if hit < 0:
                break
            out.append(self[pos:hit])
            out.append(_Tracked(new, (self.src[hit + keep],) * len(new)))
            pos = hit + len(old)
        out.append(self[pos:])
        return _Tracked.join(out)

    def split_whitespace(self) -> list[_Tracked]:
        """``str.split()`` with sources kept."""
        words: list[_Tracked] = []
        start: int | None = None
        for i, ch in enumerate(self.chars):
            if ch.isspace():
                if start is not None:
                    words.append(self[start:i])
                    start = None
            elif start is None:
                start = i
        if start is not None:
            words.append(self[start:])
        return words


# --- ComfyUI's escapes and weight parsing, with sources --------------------------------------------------------

_ESC_CLOSE = "\0\1"
_ESC_OPEN = "\0\2"


def _escape(text: _Tracked) -> _Tracked:
    # Same two replacements ComfyUI applies; both keep the length, so sources stay one-to-one.
    out = _Tracked(text.chars.replace("\\)", _ESC_CLOSE), text.src)
    return _Tracked(out.chars.replace("\\(", _ESC_OPEN), out.src)


def _unescape(text: _Tracked) -> _Tracked:
    # The parenthesis (second char of the escape) gives the source of the restored character.
    return text.replace(_ESC_CLOSE, ")", keep=1).replace(_ESC_OPEN, "(", keep=1)


def _top_level_items(text: _Tracked) -> list[_Tracked]:
    """Split into top-level items the way ``parse_parentheses`` does (including its unbalanced-input behaviour)."""
    items: list[_Tracked] = []
    start = 0  # start of the current item
    depth = 0
    for i, ch in enumerate(text.chars):
        if ch == "(":
            if depth == 0 and i > start:
                items.append(text[start:i])
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                items.append(text[start : i + 1])
                start = i + 1
    if start < len(text):
        items.append(text[start:])
    return items


def _weighted(text: _Tracked, weight: float) -> list[tuple[_Tracked, float]]:
    """ComfyUI's recursive ``token_weights``, as a loop (any nesting depth, no RecursionError)."""
    out: list[tuple[_Tracked, float]] = []
    stack: list[tuple[bool, _Tracked, float]] = [(True, text, weight)]  # (still to split?, text, weight)
    while stack:
        split, item, item_weight = stack.pop()
        if not split:
            out.append((item, item_weight))
            continue
        children: list[tuple[bool, _Tracked, float]] = []
        for child in _top_level_items(item):
            chars = child.chars
            if len(chars) >= 2 and chars[0] == "(" and chars[-1] == ")":
                inner = child[1:-1]
                inner_weight = item_weight * 1.1
                colon = inner.chars.rfind(":")
                if colon > 0:
                    try:
                        inner_weight = float(inner.chars[colon + 1 :])
                        inner = inner[:colon]
                    except ValueError:
                        pass
                children.append((True, inner, inner_weight))
            else:
                children.append((False, child, item_weight))
        stack.extend(reversed(children))  # depth-first, in text order
    return out


@dataclass(frozen=True)
class WeightedSegment:
    """One ``(text, weight)`` pair of ComfyUI's ``token_weights``, escapes already resolved."""

    text: str
    weight: float
    source: Source


def weighted_segments(text: str, *, disable_weights: bool = False) -> tuple[WeightedSegment, ...]:
    """ComfyUI's weighted segments of ``text`` (``disable_weights`` mirrors the tokenizer kwarg)."""
    escaped = _escape(_Tracked.of(text))
    pairs = [(escaped, 1.0)] if disable_weights else _weighted(escaped, 1.0)
    out = []
    for seg, weight in pairs:
        plain = _unescape(seg)
        out.append(WeightedSegment(plain.chars, weight, plain.src))
    return tuple(out)


# --- Embedding split -> the groups CLIP tokenizes one by one ---------------------------------------------------


@dataclass(frozen=True)
class ComfyGroup:
    """One unit ComfyUI tokenizes separately: a text piece, or an ``embedding:name`` reference."""

    kind: Literal["text", "embedding"]
    text: str
    """The text handed to CLIP (``kind == "text"``), or the embedding name."""
    source: Source
    weight: float
    fallback_name: str | None = None
    """The comma-stripped name ComfyUI tries when ``text`` has leading/trailing commas."""


def _split_embedding_markers(seg: _Tracked) -> list[_Tracked]:
    """``re.split(' embedding:|\\nembedding:')`` with the marker re-attached to every piece after the first."""
    pieces: list[_Tracked] = []
    start = 0
    pos = 0
    marker = EMBEDDING_PREFIX
    while True:
        hits = [h for h in (seg.chars.find(" " + marker, pos), seg.chars.find("\n" + marker, pos)) if h >= 0]
        if not hits:
            break
        hit = min(hits)
        pieces.append(seg[start:hit])
        start = hit + 1  # the separator char is consumed; the marker stays with the next piece
        pos = hit + 1 + len(marker)
    pieces.append(seg[start:])
    return [p for p in pieces if len(p)]


def comfy_groups(text: str, *, embeddings: bool = True, disable_weights: bool = False) -> tuple[ComfyGroup, ...]:
    """The units ComfyUI's tokenizer feeds to CLIP, in order.

    ``embeddings=False`` mirrors a tokenizer without an embedding directory: ``embedding:name`` is then plain text.
    """
    groups: list[ComfyGroup] = []
    for seg in weighted_segments(text, disable_weights=disable_weights):
        tracked = _Tracked(seg.text, seg.source)
        for piece in _split_embedding_markers(tracked):
            if not (embeddings and piece.chars.startswith(EMBEDDING_PREFIX)):
                groups.append(ComfyGroup("text", piece.chars, piece.src, seg.weight))
                continue
            words = piece[len(EMBEDDING_PREFIX) :].split_whitespace()
            if not words:  # ComfyUI itself fails on a bare "embedding:"; treat it as text
                groups.append(ComfyGroup("text", piece.chars, piece.src, seg.weight))
                continue
            name, rest = words[0], words[1:]
            stripped = name.chars.strip(",")
            fallback = stripped if len(stripped) < len(name.chars) else None
            groups.append(ComfyGroup("embedding", name.chars, name.src, seg.weight, fallback))
            leftover_parts: list[_Tracked] = []
            if fallback is not None:
                # ComfyUI keeps name[len(stripped):] (the trailing commas, in the usual case) as text.
                leftover_parts.append(name[len(stripped) :])
                leftover_parts.append(_Tracked.synthetic(" "))
            for k, word in enumerate(rest):
                if k:
                    leftover_parts.append(_Tracked.synthetic(" "))
                leftover_parts.append(word)
            leftover = _Tracked.join(leftover_parts)
            if len(leftover):
                groups.append(ComfyGroup("text", leftover.chars, leftover.src, seg.weight))
    return tuple(groups)


# --- Clean text for the parser ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanPrompt:
    """Plain prompt text for the parser plus, per clean character, its index in ``original``.

    ``char_map[i]`` is ``None`` only for a space this module inserted between two groups that ComfyUI tokenizes
    separately (``a(red)car`` -> ``a red car``).
    """

    original: str
    text: str
    char_map: tuple[int | None, ...]
    embeddings: tuple[str, ...] = ()
    """Names of the ``embedding:`` references removed from the text, in order."""
    weights: tuple[float, ...] = field(default=(), repr=False)
    """Prompt weight of every clean character (1.0 for inserted spaces)."""

    def original_indices(self, start: int, end: int) -> tuple[int, ...]:
        """Original indices of the clean characters ``[start, end)`` (inserted spaces left out)."""
        if not 0 <= start <= end <= len(self.text):
            raise ValueError(f"span ({start}, {end}) outside the clean text of length {len(self.text)}")
        return tuple(i for i in self.char_map[start:end] if i is not None)

    def original_span(self, start: int, end: int) -> tuple[int, int] | None:
        """Smallest original span covering the clean characters ``[start, end)``; ``None`` if none map back."""
        idx = self.original_indices(start, end)
        return (min(idx), max(idx) + 1) if idx else None


def strip_comfy_syntax(text: str, *, disable_weights: bool = False) -> CleanPrompt:
    """Remove ComfyUI weight syntax, escapes and ``embedding:`` references; collapse whitespace.

    Whitespace runs become one space (or one newline if the run holds a newline) and the ends are trimmed.
    A space is inserted between separately tokenized groups that would otherwise touch.
    Raises ``parsers.PromptError`` when ``text`` is not a valid Unicode string; any other string is accepted.
    """
    check_text(text, "prompt")
    chars: list[str] = []
    src: list[int | None] = []
    weights: list[float] = []
    names: list[str] = []

    def emit(ch: str, origin: int | None, weight: float) -> None:
        if ch.isspace():
            if not chars:
                return
            if chars[-1].isspace():
                if ch == "\n" and chars[-1] != "\n":
                    chars[-1] = "\n"
                return
            chars.append("\n" if ch == "\n" else " ")
        else:
            chars.append(ch)
        src.append(origin)
        weights.append(weight)

    for group in comfy_groups(text, disable_weights=disable_weights):
        if group.kind == "embedding":
            names.append(group.fallback_name or group.text)
            if chars and not chars[-1].isspace():
                emit(" ", None, 1.0)
            continue
        if chars and not chars[-1].isspace() and group.text and not group.text[0].isspace():
            emit(" ", None, 1.0)
        for ch, origin in zip(group.text, group.source, strict=True):
            emit(ch, origin, group.weight)

    while chars and chars[-1].isspace():
        chars.pop()
        src.pop()
        weights.pop()
    return CleanPrompt(text, "".join(chars), tuple(src), tuple(names), tuple(weights))
