"""Declared settings: one declaration per setting gives its type, range, choices, default and help text.

A setting is a dataclass field made with :func:`setting`; its type is the field's annotation. From that one
declaration come the conversion of user values (``advanced`` text, widget values, Python arguments), the range
check, the editor widget's limits, and the help page's table. Pure Python: no torch, no ComfyUI.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = "binding_guidance.setting"


class SettingError(ValueError):
    """A value that a setting refuses; the message names the setting, the value, what it must be, the default."""


@dataclass(frozen=True)
class Bounds:
    """A closed range ``[minimum, maximum]``, or ``(minimum, maximum]`` with ``exclusive_minimum``.

    Every bounded number is also finite: NaN and ±inf are outside any range.
    """

    minimum: float
    maximum: float
    exclusive_minimum: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        return above and value <= self.maximum

    def describe(self) -> str:
        low = f"> {self.minimum:g}" if self.exclusive_minimum else f"≥ {self.minimum:g}"
        return f"{low} and ≤ {self.maximum:g}"


@dataclass(frozen=True)
class Declaration:
    """What :func:`setting` stores in a field's metadata."""

    doc: str
    bounds: Bounds | None = None
    choices: tuple[Any, ...] | None = None
    hint: str = ""
    """Appended to a refusal (e.g. how to switch the feature off)."""
    off: Any = None
    """A value that means ``None`` (off) for a setting whose widget cannot hold ``None``, e.g. 0."""


def setting(
    default: Any,
    doc: str,
    *,
    bounds: Bounds | None = None,
    choices: Iterable[Any] | None = None,
    hint: str = "",
    off: Any = None,
) -> Any:
    """A dataclass field declaring one setting. Numbers need ``bounds``; a text setting needs ``choices``."""
    declaration = Declaration(doc, bounds, None if choices is None else tuple(choices), hint, off)
    return dataclasses.field(default=default, metadata={_KEY: declaration})


@dataclass(frozen=True)
class Setting:
    """One declared setting of a dataclass, with its resolved type."""

    name: str
    kind: Any
    """The base type: ``bool``, ``int``, ``float``, ``str`` or ``tuple[float, ...]`` of fixed length."""
    optional: bool
    default: Any
    declaration: Declaration

    @property
    def doc(self) -> str:
        return self.declaration.doc

    @property
    def tuple_length(self) -> int | None:
        return len(typing.get_args(self.kind)) if typing.get_origin(self.kind) is tuple else None

    def describe(self) -> str:
        """What the setting accepts, in words (the help page's "range" column)."""
        declared = self.declaration
        if declared.choices is not None:
            text = _or_list(declared.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.tuple_length is not None:
            text = f"each {declared.bounds.describe()}" if declared.bounds else "numbers"
        else:
            text = declared.bounds.describe() if declared.bounds else "any text"
        if self.optional:
            text += ", or none" if declared.off is None else f"; {declared.off:g} = off"
        return text

    def convert(self, value: Any) -> Any:
        """``value`` (text from ``advanced``, a widget value, or a Python value) as this setting's type, checked."""
        if self.optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
            return None
        converted = self._typed(value)
        if self.optional and self.declaration.off is not None and converted == self.declaration.off:
            return None
        self._check(converted, value)
        return converted

    def _typed(self, value: Any) -> Any:
        length = self.tuple_length
        try:
            if length is not None:
                items = value.strip(" ()[]").split(",") if isinstance(value, str) else list(value)
                out = tuple(_number(item, float) for item in items)
                if len(out) == length:
                    return out
            elif self.kind is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                    return value.strip().lower() == "true"
            elif self.kind in (int, float):
                return _number(value, self.kind)
            elif self.kind is str and isinstance(value, str):
                return value.strip().strip("'\"")
        except (TypeError, ValueError):
            pass
        raise self.refusal(value, _type_words(self))

    def _check(self, value: Any, given: Any) -> None:
        declared = self.declaration
        if declared.choices is not None and value not in declared.choices:
            raise self.refusal(value if self.kind is str else given, _or_list(declared.choices))
        if declared.bounds is not None:
            items = value if isinstance(value, tuple) else (value,)
            if any(item not in declared.bounds for item in items):
                raise self.refusal(given, self.describe())

    def refusal(self, value: Any, requirement: str) -> SettingError:
        """The error for a refused ``value``: names the setting, the value, the requirement and the default."""
        shown = value if isinstance(value, str) and self.kind is not str else repr(value)
        message = f"{self.name} must be {requirement}, got {shown} (default {_shown_default(self.default)})"
        if self.declaration.hint:
            message += f"; {self.declaration.hint}"
        return SettingError(message)


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    number = float(value.strip()) if isinstance(value, str) else float(value)
    if kind is int:
        if not number.is_integer():
            raise ValueError("not a whole number")
        return int(number)
    return number


def _type_words(item: Setting) -> str:
    if item.tuple_length is not None:
        words = f"{item.tuple_length} comma-separated numbers"
    else:
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[item.kind]
    return words + (" or none" if item.optional else "")


def _or_list(choices: Iterable[Any]) -> str:
    shown = [repr(choice) for choice in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _shown_default(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default) if isinstance(default, str) else f"{default}"


def declared_settings(cls: type) -> dict[str, Setting]:
    """Every declared setting of dataclass ``cls``, in field order (fields without a declaration are skipped)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Setting] = {}
    for item in dataclasses.fields(cls):
        declaration = item.metadata.get(_KEY)
        if declaration is None:
            continue
        kind, optional = _unwrap_optional(hints[item.name])
        out[item.name] = Setting(item.name, kind, optional, item.default, declaration)
    return out


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def convert_fields(instance: Any) -> None:
    """Convert and check every declared field of a dataclass instance in place (call from ``__post_init__``)."""
    for name, item in declared_settings(type(instance)).items():
        object.__setattr__(instance, name, item.convert(getattr(instance, name)))


def parse_advanced(text: str) -> dict[str, str]:
    """Read ``key = value`` lines (``#`` starts a comment) into ``{key: value text}``, refusing malformed lines."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or not key:
            raise SettingError(f"line {number}: '{raw.strip()}' is not 'key = value' (e.g. 'tv_variant = fixed').")
        if key in values:
            raise SettingError(f"line {number}: '{key}' is set twice; keep one line.")
        values[key] = value
    return values


def unknown_keys_error(keys: Iterable[str], valid: Iterable[str], owner: str) -> SettingError:
    """The refusal for keys that ``owner`` does not declare, listing the valid ones."""
    return SettingError(f"unknown parameter(s) {sorted(keys)} for {owner}; valid parameters: {list(valid)}")


def widget_spec(item: Setting, tooltip: str | None = None, **extra: Any) -> tuple:
    """The ComfyUI input spec of a setting shown as a widget (a combo for choices, else its number or boolean)."""
    options: dict[str, Any] = {"default": item.default, "tooltip": tooltip or item.doc, **extra}
    declared = item.declaration
    if declared.choices is not None:
        return ([str(choice) for choice in declared.choices], {**options, "default": str(item.default)})
    if item.kind is bool:
        return ("BOOLEAN", options)
    if item.optional and declared.off is not None:
        options["default"] = declared.off if item.default is None else item.default
    if declared.bounds is not None:
        options.update(min=declared.bounds.minimum, max=declared.bounds.maximum)
    return ("INT" if item.kind is int else "FLOAT", options)


_TABLE_TYPES = {bool: "boolean", int: "integer", float: "number", str: "choice"}


def settings_table(items: Mapping[str, Setting], skip: Iterable[str] = ()) -> str:
    """A Markdown table ``| key | type | range | default | meaning |`` of ``items`` (the help page's tables)."""
    rows = ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
    for name, item in items.items():
        if name in skip:
            continue
        kind = _TABLE_TYPES.get(item.kind, f"{item.tuple_length} numbers")
        accepts = item.describe().replace("'", "`")
        default = item.declaration.off if item.default is None and item.declaration.off is not None else item.default
        rows.append(f"| `{name}` | {kind} | {accepts} | `{_shown_default(default).strip(chr(39))}` | {item.doc} |")
    return "\n".join(rows)


def fill_tables(page: str, tables: Mapping[str, str]) -> str:
    """``page`` with the text between each ``<!-- table:NAME -->`` line and the next ``<!-- /table -->`` line
    replaced by ``tables[NAME]`` (how the help pages keep their generated tables)."""
    out: list[str] = []
    skipping = False
    for line in page.splitlines():
        if line.startswith("<!-- table:") and line.endswith(" -->"):
            name = line[len("<!-- table:") : -len(" -->")]
            if name not in tables:
                raise KeyError(f"no table named {name!r}")
            out += [line, tables[name]]
            skipping = True
        elif line == "<!-- /table -->":
            out.append(line)
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n"
