"""Gold scoring of bindings, as defined in ``shared/data/README.md`` ("Scoring convention").

Pairs are (noun head word, modifier word). Modifiers are split on spaces and hyphens (dropping ``and``),
lower-cased, with ``'s`` stripped; pairs are multiset-matched per prompt. An unmatched predicted pair whose
modifier is an ``optional`` word of a gold entity with that head, or a non-head word of a multi-word gold noun
with that head (``(bear, teddy)``), is ignored. (Checking the noun head too reproduces the README's reference
figures exactly: 0.854 / 0.691 hand-annotated.)
Micro P/R/F1 over pairs; EM = the predicted pair multiset equals the gold one (after ignoring).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_SPLIT = re.compile(r"[\s\-\u2010\u2011\u2012\u2013]+")


def _norm(word: str) -> str:
    word = word.lower().strip()
    for suffix in ("'s", "\u2019s"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
    return word


def split_words(text: str) -> list[str]:
    """Split a (multi-word / hyphenated) string into normalised words, dropping ``and`` and empty parts."""
    return [w for w in (_norm(p) for p in _SPLIT.split(text)) if w and w != "and"]


def noun_head(noun: str) -> str:
    """Head word of an entity name: its last word."""
    words = split_words(noun)
    return words[-1] if words else _norm(noun)


def pairs_of(bindings: Iterable[dict]) -> Counter:
    """Multiset of (noun head, modifier word) pairs of gold-format bindings."""
    pairs: Counter = Counter()
    for b in bindings:
        head = noun_head(b["noun"])
        for mod in b.get("modifiers", []):
            for word in split_words(mod):
                pairs[(head, word)] += 1
    return pairs


def ignorable_pairs(gold: Iterable[dict]) -> set[tuple[str, str]]:
    """(noun head, word) pairs that are neither TP nor FP: the entity's optional words and non-head noun words."""
    pairs: set[tuple[str, str]] = set()
    for b in gold:
        noun_words = split_words(b["noun"])
        head = noun_words[-1] if noun_words else _norm(b["noun"])
        words = set(noun_words[:-1])
        for opt in b.get("optional", []) or []:
            words.update(split_words(opt))
        pairs.update((head, w) for w in words)
    return pairs


@dataclass
class PromptScore:
    """Counts for one prompt."""

    tp: int
    fp: int
    fn: int
    exact: bool


def score_prompt(predicted: Sequence[dict], gold: Sequence[dict]) -> PromptScore:
    """Score one prompt's predicted bindings (gold format) against its gold bindings."""
    pred = pairs_of(predicted)
    ref = pairs_of(gold)
    matched = pred & ref
    unmatched = pred - ref
    ignore = ignorable_pairs(gold)
    for pair in list(unmatched):
        if pair in ignore:
            del unmatched[pair]
    tp = sum(matched.values())
    fp = sum(unmatched.values())
    fn = sum((ref - matched).values())
    return PromptScore(tp=tp, fp=fp, fn=fn, exact=(fp == 0 and fn == 0))


@dataclass
class Totals:
    """Micro-averaged totals over a set of prompts."""

    n: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    exact: int = 0

    def add(self, s: PromptScore) -> None:
        self.n += 1
        self.tp += s.tp
        self.fp += s.fp
        self.fn += s.fn
        self.exact += int(s.exact)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def em(self) -> float:
        return self.exact / self.n if self.n else 0.0


def is_hand_annotated(record: dict) -> bool:
    """The README's "hand-annotated" subset: ``gold_method`` contains ``manual``."""
    return "manual" in record.get("gold_method", "")


def load_gold(path: str | Path) -> list[dict]:
    """Read a gold JSONL file (one record per line)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def score_records(records: Sequence[dict], predictions: Sequence[Sequence[dict]]) -> dict[str, Totals]:
    """Totals per source plus ``"hand-annotated"`` and ``"all"``."""
    out: dict[str, Totals] = {}
    for rec, pred in zip(records, predictions, strict=True):
        s = score_prompt(pred, rec["bindings"])
        keys = [rec["source"], "all"] + (["hand-annotated"] if is_hand_annotated(rec) else [])
        for key in keys:
            out.setdefault(key, Totals()).add(s)
    return out
