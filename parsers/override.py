"""Manual override of a parse: "sunflower: pink; flamingo: yellow".

Syntax (entries separated by ";" or new lines):

* ``noun: modifier, modifier`` binds the modifiers to the noun: ``car: light blue, shiny``;
* a modifier or noun may be several words (``fire hydrant: red``);
* ``noun:`` lists an entity without modifiers;
* ``!modifier`` marks a negated modifier: ``car: !red``.

Each word is looked up in the prompt (whole words, case-insensitive) and takes its earliest occurrence that
no earlier word of the override has taken, so "car: red; bike: red" binds the two "red"s in order.
"""

from __future__ import annotations

import re

from .errors import PromptError, check_text
from .types import Entity, ParsedPrompt, Word

OVERRIDE_SYNTAX = ('syntax: "noun: modifier, modifier; noun2: modifier" - e.g. "sunflower: pink; flamingo: yellow", '
                   '"car: light blue, shiny", "cat:" (no modifiers), "car: !red" (negated)')


def _find(prompt: str, phrase: str, used: list[tuple[int, int]]) -> Word:
    words = phrase.split()
    pattern = re.compile(r"(?<![\w])" + r"\s+".join(re.escape(w) for w in words) + r"(?![\w])", re.IGNORECASE)
    for m in pattern.finditer(prompt):
        if all(m.end() <= a or m.start() >= b for a, b in used):
            used.append((m.start(), m.end()))
            return Word(m.group(), m.start(), m.end())
    if pattern.search(prompt):
        raise PromptError(f"override word {phrase!r} is used more often than it occurs in the prompt; "
                          f"{OVERRIDE_SYNTAX}")
    raise PromptError(f"override word {phrase!r} is not in the prompt {prompt!r}; {OVERRIDE_SYNTAX}")


def parse_override(override: str, prompt: str) -> ParsedPrompt:
    """Bindings written by the user, resolved to character spans of ``prompt``. Raises PromptError when invalid."""
    check_text(override, "override")
    check_text(prompt, "prompt")
    used: list[tuple[int, int]] = []
    entities: list[Entity] = []
    for raw in re.split(r"[;\n]", override):
        entry = raw.strip()
        if not entry:
            continue
        if ":" not in entry:
            raise PromptError(f"override entry {entry!r} has no ':'; {OVERRIDE_SYNTAX}")
        noun_text, _, mods_text = entry.partition(":")
        noun_text = noun_text.strip()
        if not noun_text:
            raise PromptError(f"override entry {entry!r} has no noun before ':'; {OVERRIDE_SYNTAX}")
        noun = _find(prompt, noun_text, used)
        mods: list[Word] = []
        neg: list[Word] = []
        for item in mods_text.split(","):
            item = item.strip()
            if not item:
                continue
            negated = item.startswith("!")
            item = item.lstrip("!").strip()
            if not item:
                raise PromptError(f"override entry {entry!r} has an empty negated modifier; {OVERRIDE_SYNTAX}")
            word = _find(prompt, item, used)
            mods.append(word)
            if negated:
                neg.append(word)
        entities.append(Entity(noun, tuple(mods), tuple(neg)))
    entities.sort(key=lambda e: e.noun.start)
    return ParsedPrompt(prompt=prompt, entities=tuple(entities), parser="override", warnings=())
