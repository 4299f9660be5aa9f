"""The ``dit_blocks`` setting's text: which joint-attention blocks to record (pure Python, no torch)."""

from __future__ import annotations


def parse_block_list(text: str) -> tuple[tuple[str, int], ...]:
    """``"double 0-3, single 5"`` → ``(("double", 0), ..., ("double", 3), ("single", 5))``; empty text → ``()``."""
    blocks: list[tuple[str, int]] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        kind, _, span = item.partition(" ")
        first, _, last = span.strip().partition("-")
        if kind not in ("double", "single", "joint") or not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(
                f"dit_blocks: '{item}' is not 'double N', 'single N' (Flux.1, Chroma; Qwen-Image: 'double N'), "
                "'joint N' (SD3, Z-Image) or a range like 'double 0-3'."
            )
        blocks += [(kind, index) for index in range(int(first), int(last or first) + 1)]
    return tuple(blocks)
