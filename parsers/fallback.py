"""Built-in rule parser for when spaCy or a spaCy model is missing (deterministic, word lists only).

It splits the prompt into noun phrases at articles, prepositions, verbs it knows, punctuation, and at
"and" / "," after a noun. In a phrase, colour / material / size / common adjectives and numerals are
modifiers, the last other word is the head, other words right before it are the name ("fire hydrant").
"X is (not) red" binds red to the phrase before the copula.
"""

from __future__ import annotations

import re

from .lexicon import (
    DEGREE_ADVERBS,
    LEXICAL_COMPOUNDS,
    NEGATIONS,
    PRONOUNS,
    QUANTIFIERS,
    SIZE_ADJECTIVES,
    is_two_word_modifier,
    looks_adjectival,
)
from .types import Entity, Word

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?(?:-[A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
ARTICLES = frozenset({"a", "an", "the"})
PREPOSITIONS = frozenset("""
with on in of at to near next by under over above below behind beside besides between among from into onto
for against along across around through toward towards inside outside without beneath underneath upon past
while as than like
""".split())
COPULA_FORMS = frozenset({"is", "are", "was", "were", "be", "been", "being", "looks", "look", "seems", "seem"})
NUMERALS = frozenset("""
one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
eighteen nineteen twenty thirty forty fifty hundred
""".split())
OTHER_ADJECTIVES = frozenset("""
cute beautiful pretty ugly happy sad angry old young new ancient fresh clean dirty broken empty full hot
cold warm cool soft hard smooth rough heavy light bright dark shiny dull wet dry fast slow quiet loud
elegant fancy simple plain tiny huge giant little medieval futuristic realistic detailed
""".split())


def _is_modifier(word: str) -> bool:
    w = word.lower()
    if "-" in w:
        return True  # "black-and-white", "three-legged"
    return (looks_adjectival(w) or w in SIZE_ADJECTIVES or w in NUMERALS or w.isdigit()
            or w in OTHER_ADJECTIVES or (len(w) > 4 and w.endswith("ed")))


def _is_boundary(word: str) -> bool:
    w = word.lower()
    return (w in ARTICLES or w in PREPOSITIONS or w in COPULA_FORMS or w in PRONOUNS or w in QUANTIFIERS
            or w in NEGATIONS or not w[0].isalnum() or w in ("and", "or", "but", "that", "which", "who"))


def _merge_units(words: list[tuple[str, int, int]], prompt: str) -> list[Word]:
    """Join "light blue" and "stainless steel" into one Word each."""
    out: list[Word] = []
    i = 0
    while i < len(words):
        text, s, e = words[i]
        if i + 1 < len(words):
            nt, _ns, ne = words[i + 1]
            if is_two_word_modifier(text.lower(), nt.lower()):
                out.append(Word(prompt[s:ne], s, ne))
                i += 2
                continue
        out.append(Word(text, s, e))
        i += 1
    return out


def parse_fallback(prompt: str) -> tuple[list[Entity], list[str]]:
    """Entities from word lists alone (no spaCy)."""
    toks = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(prompt)]
    entities: list[Entity] = []
    run: list[tuple[str, int, int]] = []
    recent: list[int] = []  # entities since the last preposition / copula: what a copula talks about
    state = {"subject": [], "negated": False}

    def bind_predicate(words: list[tuple[str, int, int]]) -> None:
        new = tuple(_merge_units(words, prompt))
        for idx in state["subject"]:
            ent = entities[idx]
            entities[idx] = Entity(ent.noun, ent.modifiers + new, ent.negated + (new if state["negated"] else ()))
        state["subject"] = []

    def close() -> None:
        nonlocal run
        words = [t for t in run if t[0].lower() not in DEGREE_ADVERBS]
        run = []
        if not words:
            return
        k = len(words) - 1
        while k >= 0 and _is_modifier(words[k][0]) and not (
                k > 0 and (words[k - 1][0].lower(), words[k][0].lower()) in LEXICAL_COMPOUNDS):
            k -= 1
        if k < len(words) - 1:
            bind_predicate(words[k + 1:])  # modifiers after the last noun: a predicate ("is red")
            if k < 0:
                return
            words = words[:k + 1]
        j = k
        while j > 0 and (not _is_modifier(words[j - 1][0])
                         or (words[j - 1][0].lower(), words[j][0].lower()) in LEXICAL_COMPOUNDS):
            j -= 1
        noun = Word(prompt[words[j][1]:words[k][2]], words[j][1], words[k][2])
        entities.append(Entity(noun, tuple(_merge_units(words[:j], prompt)), ()))
        recent.append(len(entities) - 1)

    for text, s, e in toks:
        low = text.lower()
        if low in ("and", ",", "or") and run and _is_modifier(run[-1][0]):
            continue  # "red, white and blue flag", "is red and blue"
        if _is_boundary(text):
            close()
            if low in COPULA_FORMS:
                state["subject"] = list(recent)
                state["negated"] = False
                recent.clear()
            elif low in NEGATIONS:
                state["negated"] = True
            elif low in PREPOSITIONS:
                recent.clear()
                state["subject"] = []
            continue
        if run and low.endswith("ing") and not _is_modifier(run[-1][0]):
            close()  # "a cat sitting on ..."
            continue
        run.append((text, s, e))
    close()
    return entities, []
