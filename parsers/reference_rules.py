"""Faithful mode: the SynGen reference extraction rules E1-E4 and merging (spec §2.5), on spaCy tokens.

Differences from the reference, on purpose:

* The reference aligns each set member to CLIP pieces by text matching (earliest free occurrence); here each
  member is the spaCy token itself, reported as its character span in the prompt. The token aligner maps spans
  to CLIP positions. Merging therefore compares token indices instead of CLIP positions (the same sets except
  where text matching would have picked another occurrence of the same word).
* A prompt without an eligible noun returns no entities plus a warning instead of crashing (spec §7 row 6).

Everything else is kept, quirks included: E3 stops after the first noun, E2 puts the noun first (so the
"noun" of "the dog is red" is ``red``), merging can make a modifier the noun ("a red dog that is fluffy").
"""

from __future__ import annotations

from typing import Any

from .types import Entity, Word

MOD = frozenset({"amod", "nmod", "compound", "npadvmod", "advmod", "acomp"})
MOD_REL = MOD | {"relcl"}
NOUN_POS = frozenset({"NOUN", "PROPN"})


def extract_e1(doc: Any) -> list[list[Any]]:
    """E1: modifiers of each noun that is not itself a modifier; noun last."""
    sets = []
    for w in doc:
        if w.pos_ not in NOUN_POS or w.dep_ in MOD:
            continue
        found: list[Any] = []
        stack: list[Any] = []
        for c in w.children:
            if c.dep_ in MOD:
                found.append(c)
                stack.extend(c.children)
        while stack:
            x = stack.pop()
            if x.dep_ in MOD or x.dep_ == "conj":
                found.append(x)
                stack.extend(x.children)
        if found:
            sets.append([*found, w])
    return sets


def extract_e2(doc: Any) -> list[list[Any]]:
    """E2: copula / AUX root with a noun and a modifier child; noun not last (reference quirk)."""
    sets = []
    for w in doc:
        if w.pos_ != "AUX" or w.dep_ in MOD:
            continue
        found: list[Any] = []
        stack: list[Any] = []
        for c in w.children:
            if c.dep_ in MOD or c.pos_ in NOUN_POS:
                if c.pos_ not in ("AUX", "VERB"):
                    found.append(c)
                stack.extend(c.children)
        if len(found) < 2:
            continue
        while stack:
            x = stack.pop()
            if x.dep_ in MOD or x.dep_ == "conj":
                if x.pos_ != "AUX":
                    found.append(x)
                stack.extend(x.children)
        sets.append(found)
    return sets


def extract_e3(doc: Any) -> list[list[Any]] | None:
    """E3: relative-clause modifiers of the FIRST eligible noun only; None when there is no such noun."""
    for w in doc:
        if w.pos_ not in NOUN_POS or w.dep_ in MOD_REL:
            continue
        found: list[Any] = []
        stack: list[Any] = []
        for c in w.children:
            if c.dep_ in MOD_REL:
                if c.pos_ not in ("AUX", "VERB"):
                    found.append(c)
                stack.extend(c.children)
        while stack:
            x = stack.pop()
            if x.dep_ in MOD_REL or x.dep_ == "conj":
                if x.pos_ not in ("AUX", "VERB"):
                    found.append(x)
                stack.extend(x.children)
        if found:
            return [[*found, w]]
        return []  # the reference returns after the first eligible noun (indentation bug, kept)
    return None


def extract_e4(doc: Any) -> list[list[Any]]:
    """E4 (include_entities=True): every noun token as a singleton set."""
    return [[w] for w in doc if w.pos_ in NOUN_POS]


def unify(sets: list[list[int]]) -> list[list[int]]:
    """Reference merging: pop the first set, fold it into the first later set sharing a member, until stable."""
    current = [list(s) for s in sets]
    changed = True
    while changed:
        changed = False
        done: list[list[int]] = []
        while current:
            first = current.pop(0)
            for j, other in enumerate(current):
                if set(first) & set(other):
                    current[j] = first + [x for x in other if x not in first]
                    changed = True
                    break
            else:
                done.append(first)
        current = done
    return current


def reference_sets(doc: Any, include_entities: bool = False) -> tuple[list[list[int]], list[str]]:
    """Merged token-index sets (noun = last element, as the reference treats it) and warnings."""
    warnings: list[str] = []
    e3 = extract_e3(doc)
    if e3 is None:
        warnings.append("no noun found in the prompt (the reference parser would crash here); "
                        "binding guidance has nothing to bind")
        e3 = []
    raw = extract_e1(doc) + extract_e2(doc) + e3
    if include_entities:
        raw += extract_e4(doc)
    merged = unify([[t.i for t in s] for s in raw])
    return merged, warnings


def _word(tok: Any) -> Word:
    return Word(tok.text, tok.idx, tok.idx + len(tok.text))


def parse_reference(doc: Any, include_entities: bool = False) -> tuple[list[Entity], list[str]]:
    """Entities from the reference rules: the last member of each merged set is the noun."""
    merged, warnings = reference_sets(doc, include_entities)
    entities = []
    for s in merged:
        noun = _word(doc[s[-1]])
        mods = tuple(_word(doc[i]) for i in s[:-1])
        entities.append(Entity(noun, mods, ()))
    return entities, warnings
