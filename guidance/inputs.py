"""The objects that travel between the nodes: BINDINGS and BINDING_CONFIG."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..binding_losses.types import TokenLayout


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
    """``[77, 77]`` CLIP self-attention of the prompt's first chunk (layer- and head-averaged), for T-SAM."""

    @property
    def is_empty(self) -> bool:
        """True when the prompt has no entity to guide; sampling then runs without guidance."""
        return not self.layout.bindings and not self.layout.subjects


@dataclass(frozen=True)
class GuidanceConfig:
    """How to guide (the BINDING_CONFIG type): the loss objective and where to read attention."""

    objective: Any
    """A ``binding_losses.objectives`` Objective (or ObjectiveChain)."""
    main_factor: int = 4
    """Preferred downsampling factor of the maps the losses read (4 = 16×16 at a 512 px SD1.x image)."""
    stop_forward_early: bool = True
    """End the guidance forward after the last layer whose maps are needed (identical gradients, less work)."""
    subject_words: tuple[str, ...] = ()
    """Explicit A&E / D&B subject words; empty means "the nouns of the bindings"."""
    guidance_attention: str = "sdpa"
    """Attention kernel of the guidance pass outside the recorded layers: "sdpa" (PyTorch, has a backward on every
    device) or "comfy" (whatever ComfyUI selected for inference)."""
    cpu_convolution: str = "default"
    """Convolution kernel of the guidance pass on CPU: "default" (PyTorch's choice, as ComfyUI's passes; the same seed
    gives the same image after a restart), "native" (PyTorch's native kernel) or "auto" (time both once per shape
    and ComfyUI start, use the faster: near-ties can change CPU images at rounding level between starts)."""
    stop_below: float | None = None
    """Early exit: stop guiding once the loss at a guided step is below this value (None: never)."""
    mode: str = "faithful"
    """"faithful": a separate guidance forward before each guided step, as the references. "fast": the gradient
    comes from the conditional rows of the step's own model call and moves the latent one step later."""
    measure_after_step: bool = False
    """Re-run the guidance forward after each update to record the loss it reached (tests and benchmarks)."""
    description: str = field(default="")
