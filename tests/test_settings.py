"""The pure settings module: declarations, conversion, range checks, the ``advanced`` text format, help tables."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest
from binding_guidance.settings import (
    Bounds,
    SettingError,
    convert_fields,
    declared_settings,
    fill_tables,
    parse_advanced,
    setting,
    settings_table,
    widget_spec,
)
from comfy_env import PACK_ROOT


@dataclass(frozen=True)
class Example:
    """A dataclass with one setting of each kind the pack uses."""

    size: float = setting(20.0, "a step size", bounds=Bounds(0.0, 1000.0))
    count: int = setting(20, "an iteration cap", bounds=Bounds(1, 1000), hint="use 'refine = false' instead")
    scale: float = setting(100.0, "a temperature", bounds=Bounds(0.0, 1000.0, exclusive_minimum=True))
    flag: bool = setting(True, "a switch")
    mode: str = setting("faithful", "a choice", choices=("faithful", "fixed"))
    level: int = setting(4, "a level", choices=(1, 2, 4, 8))
    triple: tuple[float, float, float] = setting((0.1, 0.2, 0.3), "thresholds", bounds=Bounds(0.0, 1.0))
    maybe: float | None = setting(None, "optional", bounds=Bounds(0.0, 10.0))
    stop: float | None = setting(None, "0 is off", bounds=Bounds(0.0, 10.0), off=0.0)
    plain: str = "not declared"

    def __post_init__(self) -> None:
        convert_fields(self)


def test_parse_advanced_reads_lines_and_refuses_malformed_ones() -> None:
    text = "# a comment\n\n tv_variant = fixed  # trailing\nthresholds = 0.1, 0.2, 0.3\nempty =\n"
    assert parse_advanced(text) == {"tv_variant": "fixed", "thresholds": "0.1, 0.2, 0.3", "empty": ""}
    assert parse_advanced("") == {}
    with pytest.raises(SettingError, match=r"line 2: 'nonsense' is not 'key = value'"):
        parse_advanced("refine = false\nnonsense")
    with pytest.raises(SettingError, match="line 1: '= 3' is not"):
        parse_advanced("= 3")
    with pytest.raises(SettingError, match="line 2: 'refine' is set twice"):
        parse_advanced("refine = false\nrefine = true")


def test_declarations_resolve_types_and_skip_undeclared_fields() -> None:
    items = declared_settings(Example)
    assert list(items) == ["size", "count", "scale", "flag", "mode", "level", "triple", "maybe", "stop"]
    assert items["size"].kind is float and not items["size"].optional
    assert items["maybe"].kind is float and items["maybe"].optional
    assert items["triple"].tuple_length == 3 and items["count"].kind is int


def test_text_and_python_values_convert_once_to_the_declared_type() -> None:
    text = Example(size="10", count="5.0", flag="False", mode="'fixed'", level="2", triple="(0.5, 0.6, 0.7)",
                   maybe="none", stop="0")
    assert (text.size, text.count, text.flag, text.mode, text.level) == (10.0, 5, False, "fixed", 2)
    assert text.triple == (0.5, 0.6, 0.7) and text.maybe is None and text.stop is None
    assert Example(triple="[0.5, 0.6, 0.7]").triple == Example(triple="0.5,0.6,0.7").triple == (0.5, 0.6, 0.7)
    typed = Example(size=10, count=5.0, triple=[0.5, 0.6, 0.7], maybe=3, stop=2.5)
    assert isinstance(typed.size, float) and typed.count == 5 and typed.triple == (0.5, 0.6, 0.7)
    assert typed.maybe == 3.0 and typed.stop == 2.5
    assert replace(typed, count="7").count == 7  # dataclasses.replace converts and checks again


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e30", "1000.5", "-1", math.nan, math.inf])
def test_non_finite_and_out_of_range_numbers_are_refused_naming_key_value_range_default(value: object) -> None:
    with pytest.raises(SettingError) as refused:
        Example(size=value)
    message = str(refused.value)
    assert message.startswith("size must be ≥ 0 and ≤ 1000, got ") and "(default 20.0)" in message
    assert str(value) in message or repr(float(value)) in message  # type: ignore[arg-type]


def test_refusals_name_the_requirement() -> None:
    cases = {
        "count": (0, "count must be ≥ 1 and ≤ 1000, got 0 (default 20); use 'refine = false' instead"),
        "scale": ("0", "scale must be > 0 and ≤ 1000, got 0 (default 100.0)"),
        "flag": (3, "flag must be true or false, got 3 (default true)"),
        "mode": ("sideways", "mode must be 'faithful' or 'fixed', got 'sideways' (default 'faithful')"),
        "level": (3, "level must be 1, 2, 4 or 8, got 3 (default 4)"),
        "triple": ("1, 2", "triple must be 3 comma-separated numbers, got 1, 2"),
        "maybe": ("nan", "maybe must be ≥ 0 and ≤ 10, or none, got nan (default none)"),
        "stop": ("-1", "stop must be ≥ 0 and ≤ 10; 0 = off, got -1 (default none)"),
        "size": ("abc", "size must be a number, got abc (default 20.0)"),
    }
    for key, (value, expected) in cases.items():
        with pytest.raises(SettingError) as refused:
            Example(**{key: value})
        assert str(refused.value).startswith(expected), (key, str(refused.value))
    with pytest.raises(SettingError,
                       match=r"triple must be each ≥ 0 and ≤ 1, got 0.5, 2, 0.1 \(default \(0.1, 0.2, 0.3\)\)"):
        Example(triple="0.5, 2, 0.1")
    with pytest.raises(SettingError, match="count must be a whole number"):
        Example(count=2.5)
    with pytest.raises(SettingError, match="size must be a number, got True"):
        Example(size=True)


def test_widget_specs_come_from_the_declarations() -> None:
    items = declared_settings(Example)
    assert widget_spec(items["size"], "tip", step=0.5) == (
        "FLOAT", {"default": 20.0, "tooltip": "tip", "step": 0.5, "min": 0.0, "max": 1000.0})
    assert widget_spec(items["count"])[0] == "INT" and widget_spec(items["count"])[1]["min"] == 1
    assert widget_spec(items["flag"]) == ("BOOLEAN", {"default": True, "tooltip": "a switch"})
    assert widget_spec(items["level"]) == (["1", "2", "4", "8"], {"default": "4", "tooltip": "a level"})
    assert widget_spec(items["stop"])[1]["default"] == 0.0  # a widget cannot hold None: its "off" value
    assert Example(level=widget_spec(items["level"])[1]["default"]).level == 4  # combo text converts back


def test_settings_table_and_fill_tables() -> None:
    table = settings_table(declared_settings(Example), skip=("size",))
    lines = table.splitlines()
    assert lines[0] == "| key | type | range | default | meaning |" and len(lines) == 2 + 8
    assert "| `count` | integer | ≥ 1 and ≤ 1000 | `20` | an iteration cap |" in lines
    assert "| `mode` | choice | `faithful` or `fixed` | `faithful` | a choice |" in lines
    assert "| `stop` | number | ≥ 0 and ≤ 10; 0 = off | `0.0` | 0 is off |" in lines
    page = "# Page\n<!-- table:one -->\nstale\nrows\n<!-- /table -->\ntext\n"
    assert fill_tables(page, {"one": "| new |"}) == "# Page\n<!-- table:one -->\n| new |\n<!-- /table -->\ntext\n"
    with pytest.raises(KeyError, match="two"):
        fill_tables("<!-- table:two -->\n<!-- /table -->", {})


def test_settings_import_neither_torch_nor_comfy() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); from comfy_env import register_pack_package; "
        "register_pack_package(); import binding_guidance.settings; "
        "assert not {'torch', 'comfy', 'nodes'} & set(sys.modules), sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PACK_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
