"""Thumbnails (workflows/<name>.jpg, < 100 KB) and README images (docs/images/*.png, < 300 KB) from the browser
test's screenshots: run `.venv/bin/python -m pytest tests/test_browser.py` first, then this script."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "out" / "test-artifacts" / "browser"
TOP, LEFT = 80, 62  # the editor's banner/tab bar and the side toolbar, cropped away


def graph_region(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((LEFT, TOP, width - 180, height - 60)).convert("RGB")


def save_under(image: Image.Image, path: Path, limit: int, width: int, fmt: str) -> None:
    for scale in (1.0, 0.85, 0.7, 0.55, 0.4):
        w = int(width * scale)
        resized = image.resize((w, round(image.height * w / image.width)), Image.LANCZOS)
        if fmt == "JPEG":
            resized.save(path, fmt, quality=82, optimize=True)
        else:
            resized.quantize(colors=192).save(path, fmt, optimize=True)
        if path.stat().st_size < limit:
            return
    raise RuntimeError(f"{path} stays over {limit} bytes")


def main() -> None:
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    for workflow in sorted((ROOT / "workflows").glob("*.json")):
        shot = SHOTS / f"{workflow.stem}.png"
        if not shot.exists():
            raise SystemExit(f"no screenshot {shot}: run tests/test_browser.py first")
        save_under(graph_region(Image.open(shot)), workflow.with_suffix(".jpg"), 100_000, 640, "JPEG")
        print("wrote", workflow.with_suffix(".jpg").relative_to(ROOT))
    save_under(graph_region(Image.open(SHOTS / "syngen_sd15.png")), ROOT / "docs/images/workflow_syngen.png",
               300_000, 1400, "PNG")
    save_under(Image.open(SHOTS / "syngen_sd15.previews.png").convert("RGB"),
               ROOT / "docs/images/attention_previews.png", 300_000, 900, "PNG")
    save_under(graph_region(Image.open(SHOTS / "syngen_custom_sampler_sd15.png")),
               ROOT / "docs/images/workflow_custom_sampler.png", 300_000, 1400, "PNG")
    print("wrote docs/images/workflow_syngen.png, attention_previews.png, workflow_custom_sampler.png")


if __name__ == "__main__":
    main()
