"""Declared, typed settings and the ``advanced`` text format (pure Python: no torch, no ComfyUI)."""

from __future__ import annotations

from .values import (
    Bounds,
    Declaration,
    Setting,
    SettingError,
    convert_fields,
    declared_settings,
    fill_tables,
    parse_advanced,
    setting,
    settings_table,
    unknown_keys_error,
    widget_spec,
)

__all__ = [
    "Bounds",
    "Declaration",
    "Setting",
    "SettingError",
    "convert_fields",
    "declared_settings",
    "fill_tables",
    "parse_advanced",
    "setting",
    "settings_table",
    "unknown_keys_error",
    "widget_spec",
]
