"""Token-layout test helpers: tiny stand-ins for the parser's output (duck-typed by ``align_entities``) and
short ways to build a token table and an aligned layout from a real ComfyUI tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

from binding_guidance.tokens import TokenTable, align_entities, strip_comfy_syntax, token_table


@dataclass(frozen=True)
class Word:
    """A prompt word with its character span."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Entity:
    """A noun with its modifiers, some of them negated."""

    noun: Word
    modifiers: tuple[Word, ...] = ()
    negated: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Parsed:
    """A parsed prompt: its text and entities."""

    prompt: str
    entities: tuple[Entity, ...] = field(default=())


def w(text: str, word: str, nth: int = 0) -> Word:
    """The ``nth`` occurrence of ``word`` in ``text`` as a Word."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(word, at + 1)
    return Word(word, at, at + len(word))


def ent(text: str, noun: str | tuple[str, int], *mods: str | tuple[str, int], negated: tuple[str, ...] = ()) -> Entity:
    """An Entity of ``text``; a word given as ``(word, nth)`` is its ``nth`` occurrence."""

    def mk(x: str | tuple[str, int]) -> Word:
        return w(text, x) if isinstance(x, str) else w(text, *x)

    modifiers = tuple(mk(m) for m in mods)
    return Entity(mk(noun), modifiers, tuple(m for m in modifiers if m.text in negated))




def table_for(tok: object, text: str, **kwargs: object) -> TokenTable:
    """The token table of ``text`` through a real ComfyUI tokenizer ``tok``."""
    return token_table(
        tok.tokenize_with_weights(text, return_word_ids=True, **kwargs),
        text,
        tok,
        disable_weights=bool(kwargs.get("disable_weights", False)),
    )


def layout_for(tok: object, text: str, entities: list[tuple], **kwargs: object):
    """Align ``entities`` (``ent`` arguments, a trailing dict for its keywords) with ``text``'s token table:
    ``(alignment result, table, clean prompt)``."""
    clean = strip_comfy_syntax(text)
    table = table_for(tok, text)
    parsed = Parsed(
        clean.text,
        tuple(
            ent(clean.text, *e[:-1] if isinstance(e[-1], dict) else e, **(e[-1] if isinstance(e[-1], dict) else {}))
            for e in entities
        ),
    )
    return align_entities(parsed, clean, table, **kwargs), table, clean
