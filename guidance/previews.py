"""Pictures of what guidance did: attention-map panels per binding and the loss curve (ComfyUI IMAGE tensors).

When guidance changed nothing, both pictures say so in words (the report's message). Non-finite values are drawn
as such, never cast to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..binding_losses.types import TokenLayout
from .report import GuidanceReport

PANEL = 160
LABEL = 18
LINE = 12
WARNING = (230, 80, 60)


def guidance_note(report: GuidanceReport | None) -> str | None:
    """The report's message when guidance changed nothing (the previews then say so), else None."""
    if report is None or report.applied:
        return None
    return report.message


def _pixels(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8 pixels; NaN becomes 0 and ±inf the nearest end, so nothing non-finite is cast."""
    return (np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255).astype(np.uint8)


def _heat(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to an RGB black-red-yellow-white ramp (non-finite values as 0)."""
    v = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def _word_map(maps: torch.Tensor, word: Sequence[int]) -> np.ndarray:
    picked = torch.nan_to_num(maps[list(word)].max(dim=0).values, nan=0.0, posinf=0.0, neginf=0.0)
    picked = picked - picked.min()
    picked = picked / picked.max().clamp_min(1e-12)
    return picked.numpy()


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> list[str]:
    """``text`` broken into lines that fit ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _with_note(image: Image.Image, note: str) -> Image.Image:
    """``image`` with ``note`` written in a band above it."""
    lines = _wrap(ImageDraw.Draw(image), note, image.width - 8)
    band = LINE * len(lines) + 8
    canvas = Image.new("RGB", (image.width, image.height + band), (24, 24, 24))
    canvas.paste(image, (0, band))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((4, 4 + LINE * index), line, fill=WARNING)
    return canvas


def _panel(values: np.ndarray, label: str, background: np.ndarray | None) -> Image.Image:
    heat = _heat(values)
    image = Image.fromarray(_pixels(heat)).resize((PANEL, PANEL), Image.NEAREST)
    if background is not None:
        base = Image.fromarray(_pixels(background)).resize((PANEL, PANEL), Image.BILINEAR)
        image = Image.blend(base.convert("RGB"), image, 0.6)
    canvas = Image.new("RGB", (PANEL, PANEL + LABEL), (24, 24, 24))
    canvas.paste(image, (0, LABEL))
    ImageDraw.Draw(canvas).text((4, 3), label[:22], fill=(235, 235, 235))
    return canvas


def last_maps(report: GuidanceReport | None) -> torch.Tensor | None:
    """``[K, H, W]`` maps of the first image at the last guided step, or None."""
    if report is None or report.last_maps is None:
        return None
    return report.last_maps[0]


def word_maps(maps: torch.Tensor | None, layout: TokenLayout) -> dict:
    """The maps of every position the layout uses, as JSON-friendly lists (for reports and scripts)."""
    if maps is None:
        return {}
    positions = sorted({p for binding in layout.bindings for p in binding.positions})
    return {
        "height": int(maps.shape[-2]),
        "width": int(maps.shape[-1]),
        "positions": {str(p): maps[p].tolist() for p in positions if p < maps.shape[0]},
    }


def attention_panels(
    maps: torch.Tensor | None,
    layout: TokenLayout,
    words: dict[tuple[int, ...], str],
    image: torch.Tensor | None = None,
    note: str | None = None,
) -> torch.Tensor:
    """One row per binding: the noun's map, then each modifier's map (``maps`` is ``[K, H, W]``).

    ``words`` names each word's positions. With ``image`` (``[B, H, W, 3]`` in [0, 1]) the maps are overlaid on it.
    ``note`` (see :func:`guidance_note`) is written above every row. Returns an IMAGE batch ``[bindings, h, w, 3]``;
    a single dark placeholder, with ``note`` when given, when nothing was recorded.
    """
    if maps is None or not layout.bindings:
        if note is not None:
            return _placeholder(note, colour=WARNING)
        return _placeholder("no attention recorded (no bindings, or no guided step)")
    background = image[0].detach().float().cpu().numpy() if image is not None else None
    width = 1 + max(len(binding.modifiers) for binding in layout.bindings)
    rows = []
    for binding in layout.bindings:
        row = Image.new("RGB", (width * PANEL, PANEL + LABEL), (24, 24, 24))
        for column, word in enumerate((binding.noun, *binding.modifiers)):
            label = words.get(tuple(word), f"pos {','.join(map(str, word))}")
            row.paste(_panel(_word_map(maps, word), label, background), (column * PANEL, 0))
        if note is not None:
            row = _with_note(row, note)
        rows.append(torch.from_numpy(np.asarray(row, dtype=np.float32) / 255.0))
    return torch.stack(rows)


def loss_curve(report: GuidanceReport | None, width: int = 384, height: int = 240) -> torch.Tensor:
    """Loss before (and, when measured, after) each guided step, as a ``[1, h, w, 3]`` IMAGE.

    Filled dots are applied updates, hollow ones skipped updates, × a non-finite loss (drawn at the top edge).
    When guidance changed nothing, the report's message is written on the curve.
    """
    if report is None:
        return _placeholder("no guided steps", width, height)
    if not report.steps:
        return _placeholder(report.message, width, height, colour=WARNING)
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    before = [r.loss_before for r in report.steps]
    after = [r.loss_after_step for r in report.steps if r.loss_after_step is not None]
    finite = [v for v in before + after if math.isfinite(v)] or [0.0]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    left, right, top, bottom = 48, width - 12, 24, height - 28

    def point(index: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (index / max(1, len(before) - 1))
        return x, (bottom - (bottom - top) * (value - low) / span) if math.isfinite(value) else top

    draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    line = [point(i, v) for i, v in enumerate(before) if math.isfinite(v)]
    if len(line) > 1:
        draw.line(line, fill=(200, 40, 40), width=2)
    for i, (record, v) in enumerate(zip(report.steps, before, strict=True)):
        x, y = point(i, v)
        if not math.isfinite(v):
            draw.line((x - 4, y - 4, x + 4, y + 4), fill=WARNING, width=2)
            draw.line((x - 4, y + 4, x + 4, y - 4), fill=WARNING, width=2)
        elif record.moved_latent:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(200, 40, 40))
        else:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=(120, 120, 120), width=1)
    draw.text((left, 6), f"binding loss per guided step  max {high:.4g}  min {low:.4g}", fill=(30, 30, 30))
    skipped = sum(not record.moved_latent for record in report.steps)
    footer = f"steps {report.steps[0].step}..{report.steps[-1].step}"
    footer += f"  ({skipped} skipped: hollow)" if skipped else ""
    draw.text((left, bottom + 8), footer, fill=(30, 30, 30))
    note = guidance_note(report)
    if note is not None:
        for index, text in enumerate(_wrap(draw, note, right - left - 8)):
            draw.text((left + 4, top + 4 + LINE * index), text, fill=WARNING)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def _placeholder(
    text: str, width: int = PANEL * 2, height: int = PANEL, colour: tuple[int, int, int] = (200, 200, 200)
) -> torch.Tensor:
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    lines = _wrap(draw, text, width - 16)
    for index, line in enumerate(lines):
        draw.text((8, height // 2 - LINE * len(lines) // 2 + LINE * index), line, fill=colour)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
