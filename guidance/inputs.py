"""The objects that travel between the nodes: BINDINGS and BINDING_CONFIG."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..attention_patch.block_list import parse_block_list
from ..attention_patch.joint_attention import JOINT_NORMALIZATIONS
from ..binding_losses.types import TokenLayout
from ..kernels.cpu_convolution import CPU_CONVOLUTION_CHOICES
from ..settings import Bounds, convert_fields, setting


@dataclass(frozen=True)
class PromptBindings:
    """A parsed prompt and where its words sit in the CLIP context (the BINDINGS type)."""

    prompt: str
    layout: TokenLayout
    entities: tuple[Any, ...] = ()
    parser: str = ""
    warnings: tuple[str, ...] = ()
    clean: Any = None
    """``tokens.CleanPrompt`` of the prompt (lets the sampler resolve words named on the config node)."""
    table: Any = None
    """``tokens.TokenTable`` of the prompt for the connected CLIP."""
    text_self_attention: Any = None
    """T-SAM's text self-attention T' of the prompt (layer- and head-averaged) in context coordinates: CLIP's
    ``[77, 77]`` first chunk, or T5's matrix where the positions are T5 positions (Flux.1, SD3). When ``None``,
    :meth:`text_self_attention_for` computes it from ``clip`` the first time a T-SAM objective asks."""
    clip: Any = None
    """The CLIP that encoded the prompt (T-SAM's text self-attention is computed from it only when needed)."""
    fingerprint: Any = None
    """``prompt_match.ConditioningFingerprint`` of the prompt's conditioning: the sampler refuses a positive
    conditioning that does not match it. ``None`` (hand-built bindings): no check."""
    positive_prompts: tuple[str, ...] = ()
    """The positive prompt text(s) the sampler node read from the graph, for the mismatch message only."""
    _lazy: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_empty(self) -> bool:
        """True when the prompt has no entity to guide; sampling then runs without guidance."""
        return not self.layout.bindings and not self.layout.subjects

    def text_self_attention_for(self, objective: Any) -> Any:
        """T-SAM's text self-attention when ``objective`` has a T-SAM term, else ``None`` (computed once, lazily)."""
        if self.text_self_attention is not None:
            return self.text_self_attention
        if self.clip is None or "tsam" not in str(getattr(objective, "name", "")).split("+"):
            return None
        if "text_self_attention" not in self._lazy:
            from ..attention_patch.text_attention import text_self_attention

            encoders = getattr(self.table, "encoders", ())
            self._lazy["text_self_attention"] = text_self_attention(self.clip, self.prompt, encoders,
                                                                    self.layout.context_length)
        return self._lazy["text_self_attention"]


MAIN_FACTORS = (1, 2, 4, 8)
GUIDANCE_MODES = ("faithful", "fast")
GUIDANCE_ATTENTION = ("sdpa", "comfy")
@dataclass(frozen=True, kw_only=True)
class GuidanceOptions:
    """Sampler-level settings (the BINDING_OPTIONS type, from the Binding Guidance Options node). Each field is a
    declared setting: its type, range and help text are here and nowhere else."""

    main_factor: int = setting(
        4,
        "attention level the losses read, as a downsampling factor from the latent: 4 = 1/32 of the image side "
        "(16×16 at 512 px SD1.x, 32×32 at 1024 px SDXL). Coarser levels (8) guide layout, finer ones (1, 2) "
        "detail and cost more memory",
        choices=MAIN_FACTORS,
    )
    stop_below: float | None = setting(
        None,
        "early exit: once the loss at a guided step is below this value, the remaining steps are not guided; "
        "0 never stops early",
        bounds=Bounds(0.0, 1e9),
        off=0.0,
    )
    guidance_attention: str = setting(
        "sdpa",
        "attention kernel of the guidance pass outside the recorded layers: `sdpa` (PyTorch, has a backward on "
        "every device) or `comfy` (the kernel ComfyUI chose for inference; use it only if sdpa fails on your "
        "device)",
        choices=GUIDANCE_ATTENTION,
    )
    cpu_convolution: str = setting(
        "default",
        "on a CPU only: convolution kernel of the guidance pass. `default` keeps PyTorch's choice, as ComfyUI's "
        "own passes: the same seed gives the same image after a restart; `native` always uses PyTorch's native "
        "kernel; `auto` times oneDNN against PyTorch's native kernel once per layer shape and uses the faster, "
        "which can be quicker but may choose differently after a restart, changing CPU images at rounding level",
        choices=CPU_CONVOLUTION_CHOICES,
    )
    measure_after_step: bool = setting(
        False,
        "re-measure the loss after each update (one extra pass per guided step) so the sampler's report shows "
        "what each step achieved; for diagnosis, it slows sampling",
    )
    joint_normalization: str = setting(
        "text",
        "Joint-attention DiTs only (Flux.1, Chroma, SD3, Z-Image, Qwen-Image): how a joint-attention map is "
        "normalised. `text`: the image query's softmax over the text keys only (each map sums to 1 over the "
        "text, as on a UNet); `joint`: the text columns of the softmax over text and image keys",
        choices=JOINT_NORMALIZATIONS,
    )
    dit_blocks: str = setting(
        "",
        "Joint-attention DiTs only: the blocks whose attention is recorded, e.g. `double 5-18, single 0-9` (Flux.1, "
        "Chroma), `joint 0-23` (SD3, Z-Image) or `double 0-29` (Qwen-Image); empty: all double-stream blocks "
        "(Flux.1, Chroma), every block (the others). The guidance pass stops after the last one",
        check=parse_block_list,
    )
    dit_checkpointing: bool = setting(
        True,
        "Flux.1, Chroma and SD3 only: during the guidance backward, recompute each block's activations (and the "
        "weights ComfyUI casts from fp8 or bf16) one block at a time instead of keeping them all from the forward. "
        "Same gradient and image, much less memory, one more forward of those blocks per guided step; turn it off "
        "only when memory is plentiful and speed matters",
    )

    def __post_init__(self) -> None:
        convert_fields(self)


SAMPLER_SETTINGS = tuple(item.name for item in fields(GuidanceOptions))
JOINT_ATTENTION_SETTINGS = ("joint_normalization", "dit_blocks", "dit_checkpointing")
"""Sampler settings for the joint-attention DiTs only; optional inputs of the Options node (saved graphs lack them)."""
"""The sampler-level settings (``GuidanceOptions``); older workflows set them in ``advanced``."""


@dataclass(frozen=True, kw_only=True)
class GuidanceConfig(GuidanceOptions):
    """How to guide (the BINDING_CONFIG type): the loss objective, the guidance mode and the sampler settings."""

    objective: Any
    """A ``binding_losses.objectives`` Objective (or ObjectiveChain)."""
    mode: str = setting(
        "faithful",
        "faithful: a separate gradient pass before each guided step, as in the papers. fast: the gradient comes "
        "from the step's own model call and each update lands one step late, so it removes less binding loss "
        "while guidance runs (measured in docs/guidance_modes.md); it saves time on a CPU only (see the README's "
        "cost table). In a chain, the config connected to the sampler decides.",
        choices=GUIDANCE_MODES,
    )
    stop_forward_early: bool = True
    """End the guidance forward after the last layer whose maps are needed (identical gradients, less work)."""
    subject_words: tuple[str, ...] = ()
    """Explicit A&E / D&B subject words; empty means "the nouns of the bindings"."""
    description: str = field(default="")

    def options(self) -> GuidanceOptions:
        """The sampler-level settings of this config."""
        return GuidanceOptions(**{name: getattr(self, name) for name in SAMPLER_SETTINGS})
