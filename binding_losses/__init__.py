"""Pure-torch losses for binding guidance: map processing, distances, per-method losses, schedules.

Imports only torch, the standard library and the pack's pure ``settings`` (never ComfyUI).
"""

from .attend_excite import AttendExciteObjective, attend_excite_loss, attend_excite_maxima, subject_maps
from .base import LossResult, Objective, Refinement
from .distances import entropy, jsd, kl_divergence, pairwise_symmetric_kl, symmetric_kl
from .divide_bind import DivideBindBreakdown, DivideBindObjective, binding_jsd, divide_bind_breakdown, divide_bind_loss
from .objectives import METHODS, ObjectiveChain, default_params, make_objective, method_settings
from .schedules import (
    decaying_step_size,
    divide_bind_weight,
    is_guided,
    refinement_indices,
    refinement_phase,
    scaled_index,
    tsam_threshold,
)
from .smoothing import downsample_nearest, gaussian_kernel, gaussian_smooth, gaussian_taps
from .subjects import attribute_words, subject_words
from .syngen import (
    PairTerm,
    SynGenBreakdown,
    SynGenEntropyObjective,
    SynGenObjective,
    syngen_breakdown,
    syngen_entropy_loss,
    syngen_loss,
)
from .token_maps import token_softmax
from .total_variation import total_variation
from .tsam import (
    TSAMObjective,
    cross_attention_similarity,
    row_normalize,
    text_attention_matrix,
    tsam_code_row_terms,
    tsam_loss,
    tsam_paper_row_terms,
)
from .types import AttentionLevel, TokenBinding, TokenLayout, Word

tv_bind = divide_bind_loss
"""Alias: the D&B ``tv_bind`` loss (:func:`divide_bind_loss` with its default ``mode="tv_bind"``)."""

__all__ = [
    "METHODS",
    "AttendExciteObjective",
    "AttentionLevel",
    "DivideBindBreakdown",
    "DivideBindObjective",
    "LossResult",
    "Objective",
    "ObjectiveChain",
    "PairTerm",
    "Refinement",
    "SynGenBreakdown",
    "SynGenEntropyObjective",
    "SynGenObjective",
    "TSAMObjective",
    "TokenBinding",
    "TokenLayout",
    "Word",
    "attend_excite_loss",
    "attend_excite_maxima",
    "attribute_words",
    "binding_jsd",
    "cross_attention_similarity",
    "decaying_step_size",
    "default_params",
    "divide_bind_breakdown",
    "divide_bind_loss",
    "divide_bind_weight",
    "downsample_nearest",
    "entropy",
    "gaussian_kernel",
    "gaussian_smooth",
    "gaussian_taps",
    "is_guided",
    "jsd",
    "kl_divergence",
    "make_objective",
    "method_settings",
    "pairwise_symmetric_kl",
    "refinement_indices",
    "refinement_phase",
    "row_normalize",
    "scaled_index",
    "subject_maps",
    "subject_words",
    "symmetric_kl",
    "syngen_breakdown",
    "syngen_entropy_loss",
    "syngen_loss",
    "text_attention_matrix",
    "token_softmax",
    "total_variation",
    "tsam_code_row_terms",
    "tsam_loss",
    "tsam_paper_row_terms",
    "tsam_threshold",
    "tv_bind",
]
