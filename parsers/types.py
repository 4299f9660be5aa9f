"""Result types of the prompt parsers (plain dataclasses, no spaCy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    """A span of the prompt: ``prompt[start:end] == text``. May cover several words ("light blue")."""

    text: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"Word {self.text!r}: bad span {self.start}..{self.end}")
        if len(self.text) != self.end - self.start:
            raise ValueError(f"Word {self.text!r}: span {self.start}..{self.end} has a different length")


@dataclass(frozen=True)
class Entity:
    """One entity mention: its name (``noun``) and the modifiers bound to it.

    ``negated`` is the subset of ``modifiers`` that the prompt negates ("a car that is not red").
    """

    noun: Word
    modifiers: tuple[Word, ...] = ()
    negated: tuple[Word, ...] = ()

    def __post_init__(self) -> None:
        missing = [w for w in self.negated if w not in self.modifiers]
        if missing:
            raise ValueError(f"negated words {[w.text for w in missing]} are not among the modifiers")

    @property
    def positive_modifiers(self) -> tuple[Word, ...]:
        """Modifiers that are not negated (the ones binding guidance should pull towards the noun)."""
        return tuple(w for w in self.modifiers if w not in self.negated)


@dataclass(frozen=True)
class ParsedPrompt:
    """Parser output: entities in prompt order, which parser ran, and warnings for the user."""

    prompt: str
    entities: tuple[Entity, ...]
    parser: str
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for ent in self.entities:
            for w in (ent.noun, *ent.modifiers):
                if self.prompt[w.start:w.end] != w.text:
                    raise ValueError(f"Word {w.text!r} does not match prompt[{w.start}:{w.end}]")

    def as_gold(self) -> list[dict]:
        """Entities in the gold format of ``parse_dev.jsonl`` (``negated`` only where non-empty)."""
        out: list[dict] = []
        for ent in self.entities:
            item: dict = {"noun": ent.noun.text, "modifiers": [w.text for w in ent.modifiers]}
            if ent.negated:
                item["negated"] = [w.text for w in ent.negated]
            out.append(item)
        return out

    def describe(self) -> str:
        """Human-readable multi-line preview of the parse (for the node's text output)."""
        lines = [f"parser: {self.parser}", f"prompt: {self.prompt}"]
        if not self.entities:
            lines.append("entities: (none; binding guidance has nothing to do)")
        for i, ent in enumerate(self.entities, 1):
            mods = []
            for w in ent.modifiers:
                mods.append(f"NOT {w.text}" if w in ent.negated else w.text)
            shown = ", ".join(mods) if mods else "(no modifiers)"
            lines.append(f"{i}. {ent.noun.text} [{ent.noun.start}:{ent.noun.end}] <- {shown}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


def sort_entities(entities: list[Entity] | tuple[Entity, ...]) -> tuple[Entity, ...]:
    """Entities in prompt order of their noun, modifiers of each in prompt order."""
    ordered = []
    for ent in sorted(entities, key=lambda e: (e.noun.start, e.noun.end)):
        mods = tuple(sorted(ent.modifiers, key=lambda w: (w.start, w.end)))
        neg = tuple(sorted(ent.negated, key=lambda w: (w.start, w.end)))
        ordered.append(Entity(ent.noun, mods, neg))
    return tuple(ordered)
