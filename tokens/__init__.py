"""ComfyUI prompt syntax and CLIP tokenizer output -> CLIP context positions (no torch or ComfyUI at import)."""

from .align import (
    AlignedEntity,
    AlignedWord,
    AlignmentResult,
    align_entities,
    describe_layout,
    describe_table,
    find_words,
    word_positions,
)
from .clip_tokens import ClipToken, TokenTable, token_table, token_table_for_clip, tokenize_prompt
from .prompt_text import CleanPrompt, ComfyGroup, WeightedSegment, comfy_groups, strip_comfy_syntax, weighted_segments

__all__ = [
    "AlignedEntity",
    "AlignedWord",
    "AlignmentResult",
    "CleanPrompt",
    "ClipToken",
    "ComfyGroup",
    "TokenTable",
    "WeightedSegment",
    "align_entities",
    "comfy_groups",
    "describe_layout",
    "describe_table",
    "find_words",
    "strip_comfy_syntax",
    "token_table",
    "token_table_for_clip",
    "tokenize_prompt",
    "weighted_segments",
    "word_positions",
]
