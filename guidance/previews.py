"""Pictures of what guidance did: attention-map panels per binding and the loss curve (ComfyUI IMAGE tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..binding_losses.types import TokenLayout
from .report import GuidanceReport

PANEL = 160
LABEL = 18


def _heat(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to an RGB black-red-yellow-white ramp."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def _word_map(maps: torch.Tensor, word: Sequence[int]) -> np.ndarray:
    picked = maps[list(word)].max(dim=0).values
    picked = picked - picked.min()
    picked = picked / picked.max().clamp_min(1e-12)
    return picked.numpy()


def _panel(values: np.ndarray, label: str, background: np.ndarray | None) -> Image.Image:
    heat = _heat(values)
    image = Image.fromarray((heat * 255).astype(np.uint8)).resize((PANEL, PANEL), Image.NEAREST)
    if background is not None:
        base = Image.fromarray((background * 255).astype(np.uint8)).resize((PANEL, PANEL), Image.BILINEAR)
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
) -> torch.Tensor:
    """One row per binding: the noun's map, then each modifier's map (``maps`` is ``[K, H, W]``).

    ``words`` names each word's positions. With ``image`` (``[B, H, W, 3]`` in [0, 1]) the maps are overlaid on it.
    Returns an IMAGE batch ``[bindings, h, w, 3]``; a single dark placeholder when nothing was recorded.
    """
    if maps is None or not layout.bindings:
        return _placeholder("no attention recorded (no bindings, or no guided step)")
    background = image[0].detach().float().cpu().numpy() if image is not None else None
    width = 1 + max(len(binding.modifiers) for binding in layout.bindings)
    rows = []
    for binding in layout.bindings:
        row = Image.new("RGB", (width * PANEL, PANEL + LABEL), (24, 24, 24))
        for column, word in enumerate((binding.noun, *binding.modifiers)):
            label = words.get(tuple(word), f"pos {','.join(map(str, word))}")
            row.paste(_panel(_word_map(maps, word), label, background), (column * PANEL, 0))
        rows.append(torch.from_numpy(np.asarray(row, dtype=np.float32) / 255.0))
    return torch.stack(rows)


def loss_curve(report: GuidanceReport | None, width: int = 384, height: int = 240) -> torch.Tensor:
    """Loss before (and, when measured, after) each guided step, as a ``[1, h, w, 3]`` IMAGE."""
    if report is None or not report.steps:
        return _placeholder("no guided steps", width, height)
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    before = [r.loss_before for r in report.steps]
    after = [r.loss_after_step for r in report.steps if r.loss_after_step is not None]
    values = before + after
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    left, right, top, bottom = 48, width - 12, 24, height - 28

    def point(index: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (index / max(1, len(before) - 1))
        return x, bottom - (bottom - top) * (value - low) / span

    draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    draw.line([point(i, v) for i, v in enumerate(before)], fill=(200, 40, 40), width=2) if len(before) > 1 else None
    for i, v in enumerate(before):
        x, y = point(i, v)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(200, 40, 40))
    draw.text((left, 6), f"binding loss per guided step  max {high:.4g}  min {low:.4g}", fill=(30, 30, 30))
    draw.text((left, bottom + 8), f"steps {report.steps[0].step}..{report.steps[-1].step}", fill=(30, 30, 30))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def _placeholder(text: str, width: int = PANEL * 2, height: int = PANEL) -> torch.Tensor:
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    ImageDraw.Draw(canvas).text((8, height // 2 - 6), text, fill=(200, 200, 200))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
