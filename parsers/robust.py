"""Robust mode: explicit noun roles over a spaCy parse.

Small spaCy models often get noun-phrase-internal structure wrong on bare prompts ("a blue rose" parsed as a
sentence), so the noun phrases are found linearly from the tags, and the dependency parse is used for what
crosses phrases:

* noun phrases: runs of adjectives, participles, numerals, nouns and colour / material words; a comma or
  "and" continues a run only between modifiers ("red, green and blue balloons"), not after a noun
  ("a red apple and yellow bananas"); the last word is the head, non-attribute nouns right before it are
  part of the entity name ("fire hydrant"), the rest are modifiers (quantifiers, determiners, degree
  adverbs dropped; possessors end a phrase, so "the girl's red hat" binds red to hat);
* post-nominal adjectives ("a cat, fluffy and white");
* copula predicates, main or relative clause, on every noun ("the car is red", "a cat that is orange"),
  shared by coordinated subjects, negation flagged ("a car that is not red");
* units: hyphenated words ("black-and-white"), two-word colours ("light blue"), fixed materials
  ("stainless steel") are one Word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .lexicon import (
    COPULAS,
    DEGREE_ADVERBS,
    LEXICAL_COMPOUNDS,
    NEGATIONS,
    PRONOUNS,
    QUANTIFIERS,
    SHADES,
    is_two_word_modifier,
    looks_adjectival,
)
from .types import Entity, Word

NOUN_POS = frozenset({"NOUN", "PROPN"})
NOMINAL_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "pobj", "attr", "conj", "appos", "ROOT", "dative",
                          "npadvmod", "oprd"})
PARTICIPLE_TAGS = frozenset({"VBN", "VBG", "VBD"})
ONE_WORDS = frozenset({"one", "ones"})
HYPHENS = ("-", "\u2010", "\u2011")
LIST_WORDS = frozenset({"and", "or", ",", "&"})


def _low(tok: Any) -> str:
    return tok.text.lower()


def hyphen_groups(doc: Any) -> dict[int, tuple[int, int]]:
    """Token index -> (first, last) index of its hyphen-joined group ("black-and-white"), for groups only."""
    groups: dict[int, tuple[int, int]] = {}
    i, n = 0, len(doc)
    while i < n:
        j = i
        while (j + 2 < n and doc[j + 1].text in HYPHENS and not doc[j].whitespace_
               and not doc[j + 1].whitespace_ and not doc[j + 2].is_punct):
            j += 2
        if j > i:
            for k in range(i, j + 1):
                groups[k] = (i, j)
        i = j + 1
    return groups


@dataclass
class _Chunk:
    """A noun phrase: ``units`` are (first, last) token ranges, the last unit holds the head."""

    units: list[tuple[int, int]]
    name: tuple[int, int] = (0, 0)
    mods: set[int] = field(default_factory=set)
    neg: set[int] = field(default_factory=set)

    @property
    def head(self) -> int:
        return self.units[-1][1]


class _Parse:
    """One robust parse of a spaCy Doc."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.text: str = doc.text  # Doc.text rebuilds the string on every access (quadratic in _word)
        self.groups = hyphen_groups(doc)
        self.chunks: list[_Chunk] = []
        self.owner: dict[int, _Chunk] = {}  # token index -> the chunk it lies in

    # -- word classes -----------------------------------------------------------------------------------
    def _unit_at(self, i: int) -> tuple[int, int]:
        return self.groups.get(i, (i, i))

    def _is_nounish(self, tok: Any) -> bool:
        return tok.pos_ in NOUN_POS and not looks_adjectival(tok.text)

    def _is_content(self, i: int, run: list[tuple[int, int]]) -> bool:
        """Whether the unit at ``i`` can continue the noun-phrase run ``run``."""
        doc = self.doc
        tok = doc[i]
        low = _low(tok)
        if i in self.groups:
            return True
        if low in PRONOUNS or tok.is_punct or tok.is_space:
            return False
        if low in QUANTIFIERS:
            return False  # like a determiner, starts a new phrase
        nxt = self._next_content(i)
        if low in DEGREE_ADVERBS:
            return nxt
        if run and self._lexical(doc[run[-1][1]], tok):
            return True  # "a soda can", "a stop sign" with the head mistagged
        if looks_adjectival(tok.text) or tok.pos_ in ("NOUN", "PROPN", "ADJ", "NUM"):
            return True
        if self._prenominal_participle(tok) and nxt:
            return True  # participle before a noun: "a sleeping dog", "matching red jackets"
        if run and tok.is_alpha and not any(self._is_nounish(doc[b]) for _, b in run):
            # a head the tagger got wrong right after modifiers: "a blue rose and ...", "a pink oven"
            if tok.pos_ in ("VERB", "ADV", "X", "INTJ", "PRON") and (tok.dep_ in NOMINAL_DEPS or not nxt):
                return not self._next_content(i)
        if run and tok.is_alpha and tok.pos_ in ("ADV", "X", "PRON") and tok.dep_ in NOMINAL_DEPS:
            return True  # "an black fire hydrant" with hydrant tagged ADV / dobj
        return False

    @staticmethod
    def _lexical(left: Any, right: Any) -> bool:
        pair = (_low(left), _low(right))
        return pair in LEXICAL_COMPOUNDS or (pair[0], right.lemma_.lower()) in LEXICAL_COMPOUNDS

    @staticmethod
    def _prenominal_participle(tok: Any) -> bool:
        return tok.pos_ == "VERB" and tok.tag_ in PARTICIPLE_TAGS and (
            tok.dep_ in ("amod", "compound", "nmod", "advmod") and tok.head.i > tok.i)

    def _next_content(self, i: int) -> bool:
        """Whether the word after the unit at ``i`` is a plain noun-phrase word (adjective / noun / number)."""
        _, b = self._unit_at(i)
        j = b + 1
        if j >= len(self.doc):
            return False
        tok = self.doc[j]
        if j in self.groups:
            return True
        if _low(tok) in PRONOUNS or tok.is_punct:
            return False
        if _low(tok) in QUANTIFIERS:
            return False
        return looks_adjectival(tok.text) or tok.pos_ in ("NOUN", "PROPN", "ADJ", "NUM") or (
            self._prenominal_participle(tok) and self._next_content(j))

    def _is_modifier_like(self, unit: tuple[int, int]) -> bool:
        a, b = unit
        tok = self.doc[b]
        return looks_adjectival(tok.text) or tok.pos_ in ("ADJ", "NUM") or (
            tok.pos_ == "VERB" and tok.tag_ in PARTICIPLE_TAGS) or (a != b and tok.pos_ not in NOUN_POS)

    # -- noun phrases -------------------------------------------------------------------------------------
    def find_chunks(self) -> None:
        doc = self.doc
        run: list[tuple[int, int]] = []
        i = 0
        while i < len(doc):
            tok = doc[i]
            if run and _low(tok) in LIST_WORDS and self._is_modifier_like(run[-1]):
                # "red, green and blue balloons": continue across ", and" between modifiers
                j = i
                while j < len(doc) and _low(doc[j]) in LIST_WORDS:
                    j += 1
                if j < len(doc) and self._is_content(j, run):
                    i = j
                    continue
            if self._is_content(i, run):
                unit = self._unit_at(i)
                run.append(unit)
                i = unit[1] + 1
                continue
            self._close(run)
            run = []
            i += 1
        self._close(run)

    def _after_article(self, run: list[tuple[int, int]]) -> bool:
        first = run[0][0]
        return first > 0 and _low(self.doc[first - 1]) in ("a", "an", "the")

    def _trim_verb(self, run: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Drop a final verb the tagger read as a noun: "a red kite sails high", "the pen and notebook jot down"."""
        if len(run) < 2 or run[-1][0] != run[-1][1] or run[-2][0] != run[-2][1]:
            return run
        doc = self.doc
        h, p = doc[run[-1][1]], doc[run[-2][1]]
        if not self._is_nounish(p) or self._lexical(p, h) or h.dep_ not in ("ROOT", "conj"):
            return run
        if any(c.dep_ in ("amod", "nummod") for c in h.children):
            return run
        acts = any(c.dep_ in ("prep", "dobj", "advmod", "prt", "npadvmod", "acomp", "advcl", "ccomp", "dative")
                   and c.i > h.i for c in h.children)
        acts = acts or (h.i + 1 < len(doc) and doc[h.i + 1].tag_ in ("DT", "IN", "RB", "RP"))
        if not acts:
            return run
        third_person = h.tag_ in ("NNS", "VBZ") and p.tag_ in ("NN", "NNP")
        first = run[0][0]
        after_and = first > 0 and _low(doc[first - 1]) in ("and", "&") and h.tag_ in ("NN", "NNS", "VB", "VBP")
        return run[:-1] if third_person or after_and else run

    def _close(self, run: list[tuple[int, int]]) -> None:
        if not run:
            return
        run = self._trim_verb(run)
        doc = self.doc
        a, b = run[-1]
        head = doc[b]
        predicative = head.dep_ in ("acomp", "attr", "oprd") and head.head.lemma_.lower() in COPULAS
        if a != b:
            ok = not self._is_modifier_like(run[-1])  # "T-shirt", "Style-Empire"
        elif _low(head) in ONE_WORDS:
            ok = len(run) > 1
        elif head.pos_ in NOUN_POS:
            ok = not (looks_adjectival(head.text) and (predicative or head.dep_ in ("amod", "advmod")))
        elif head.pos_ == "NUM" or head.tag_ == "VBN" or predicative or looks_adjectival(head.text):
            ok = False
        elif head.pos_ == "ADJ":
            ok = self._after_article(run) or (len(run) > 1 and head.dep_ in ("pobj", "dobj", "nsubj", "appos"))
        else:
            ok = len(run) > 1 and (head.dep_ in NOMINAL_DEPS or self._after_article(run))
        if not ok:
            return
        chunk = _Chunk(units=list(run))
        self._split_name(chunk)
        self.chunks.append(chunk)
        for ua, ub in run:
            for k in range(ua, ub + 1):
                self.owner[k] = chunk

    def _split_name(self, chunk: _Chunk) -> None:
        doc = self.doc
        units = chunk.units
        k = len(units) - 1
        while k > 0:
            left, right = units[k - 1], units[k]
            lt, rt = doc[left[1]], doc[right[0]]
            if left[0] != left[1]:
                break
            if (_low(lt), _low(rt)) in LEXICAL_COMPOUNDS or (_low(lt), rt.lemma_.lower()) in LEXICAL_COMPOUNDS:
                k -= 1
                continue
            if self._is_nounish(lt) and _low(lt) not in QUANTIFIERS:
                k -= 1
                continue
            break
        chunk.name = (units[k][0], units[-1][1])
        for ua, ub in units[:k]:
            for t in range(ua, ub + 1):
                if self._keep_modifier(t, (ua, ub)):
                    chunk.mods.add(t)

    def _keep_modifier(self, t: int, unit: tuple[int, int]) -> bool:
        tok = self.doc[t]
        if unit[0] != unit[1]:
            return True
        low = _low(tok)
        if low in QUANTIFIERS or low in DEGREE_ADVERBS or low in NEGATIONS or low in PRONOUNS:
            return False
        if tok.pos_ in ("DET", "CCONJ", "ADP", "PART", "PRON", "PUNCT", "SCONJ", "AUX", "SPACE"):
            return False
        if tok.pos_ == "ADV" and not looks_adjectival(tok.text) and low not in SHADES:
            return False
        return True

    # -- clause-level bindings (dependency parse) ---------------------------------------------------------
    def _adjective_chain(self, tok: Any) -> list[Any]:
        out = [tok]
        stack = [c for c in tok.children if c.dep_ == "conj"]
        while stack:
            c = stack.pop()
            if c.pos_ in ("ADJ", "VERB", "NUM") or looks_adjectival(c.text):
                if c.i in self.owner:
                    continue
                out.append(c)
                stack.extend(x for x in c.children if x.dep_ == "conj")
        return out

    def _with_left_mods(self, tok: Any) -> list[int]:
        """A predicate adjective plus the words that belong to it ("bright yellow", "black-and-white")."""
        if tok.i in self.groups:
            a, b = self.groups[tok.i]
            return list(range(a, b + 1))
        ids = [tok.i]
        for c in tok.lefts:
            if c.dep_ in ("advmod", "amod", "compound", "npadvmod") and (
                    _low(c) in SHADES or looks_adjectival(c.text)):
                ids.append(c.i)
        return ids

    def postnominal(self) -> None:
        for chunk in self.chunks:
            head = self.doc[chunk.head]
            for c in head.rights:
                if c.dep_ == "amod" and c.i not in self.owner and (
                        c.pos_ in ("ADJ", "VERB") or looks_adjectival(c.text)):
                    for a in self._adjective_chain(c):
                        chunk.mods.update(self._with_left_mods(a))

    def predicates(self) -> None:
        for verb in self.doc:
            if verb.pos_ not in ("AUX", "VERB") or verb.lemma_.lower() not in COPULAS:
                continue
            preds = [c for c in verb.children if c.dep_ in ("acomp", "oprd", "attr")
                     and (c.pos_ in ("ADJ", "VERB") or looks_adjectival(c.text))
                     and not (c.i in self.owner and self.owner[c.i].head == c.i)]
            if not preds:
                continue
            subjects = self._subjects(verb)
            negated = any(c.dep_ == "neg" for c in verb.children)
            for p in preds:
                for a in self._adjective_chain(p):
                    ids = self._with_left_mods(a)
                    neg = negated or any(c.dep_ == "neg" for c in a.children)
                    for chunk in subjects:
                        chunk.mods.update(ids)
                        if neg:
                            chunk.neg.update(ids)

    def _subjects(self, verb: Any) -> list[_Chunk]:
        subj = [c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass")]
        if not subj and verb.dep_ == "conj":
            subj = [c for c in verb.head.children if c.dep_ in ("nsubj", "nsubjpass")]
        out: list[_Chunk] = []
        for s in subj:
            if _low(s) in ("that", "which", "who") or s.tag_ in ("WDT", "WP"):
                if verb.dep_ in ("relcl", "acl") and verb.head.i in self.owner:
                    out.append(self.owner[verb.head.i])
                continue
            stack = [s]
            while stack:
                t = stack.pop()
                if t.i in self.owner and self.owner[t.i] not in out:
                    out.append(self.owner[t.i])
                stack.extend(c for c in t.children if c.dep_ == "conj")
        return out

    # -- output ---------------------------------------------------------------------------------------
    def _units(self, ids: set[int], name: tuple[int, int]) -> list[tuple[int, int]]:
        doc = self.doc
        units: list[tuple[int, int]] = []
        used: set[int] = set()
        for i in sorted(ids):
            if i in used or name[0] <= i <= name[1]:
                continue
            if i in self.groups:
                a, b = self.groups[i]
                units.append((a, b))
                used.update(range(a, b + 1))
                continue
            j = i + 1
            if (j in ids and j not in self.groups and doc[i].whitespace_
                    and is_two_word_modifier(_low(doc[i]), _low(doc[j]))):
                units.append((i, j))
                used.update((i, j))
                continue
            units.append((i, i))
            used.add(i)
        return units

    def _word(self, a: int, b: int) -> Word:
        start = self.doc[a].idx
        end = self.doc[b].idx + len(self.doc[b].text)
        return Word(self.text[start:end], start, end)

    def entities(self) -> list[Entity]:
        self.find_chunks()
        self.postnominal()
        self.predicates()
        out = []
        for chunk in self.chunks:
            noun = self._word(*chunk.name)
            mods, neg = [], []
            for a, b in self._units(chunk.mods, chunk.name):
                w = self._word(a, b)
                if w in mods:
                    continue
                mods.append(w)
                if any(k in chunk.neg for k in range(a, b + 1)):
                    neg.append(w)
            out.append(Entity(noun, tuple(mods), tuple(neg)))
        return out


def parse_robust(doc: Any) -> tuple[list[Entity], list[str]]:
    """Entities of a spaCy Doc in robust mode, and warnings."""
    entities = _Parse(doc).entities()
    warnings = [] if entities else ["no noun found in the prompt; binding guidance has nothing to bind"]
    return entities, warnings
