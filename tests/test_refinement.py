"""Refinement control flow (issue #17): ``refine`` against straight transcriptions of the reference loops.

The transcriptions below follow the text of spec §4.3 (Attend-and-Excite), §5.4 (Divide & Bind) and §6.4 (T-SAM),
not the pack's code. The losses come from the pack's real objectives, on attention maps that a small
differentiable toy (a per-pixel token softmax of a linear map of the latent) makes from the latent.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from binding_guidance.binding_losses import AttentionLevel, LossResult, TokenBinding, TokenLayout
from binding_guidance.binding_losses.objectives import (
    AttendExciteObjective,
    DivideBindObjective,
    Objective,
    TSAMObjective,
    make_objective,
)
from binding_guidance.binding_losses.refinement import refine
from binding_guidance.binding_losses.tsam import cross_attention_similarity, row_normalize, text_attention_matrix

TOKENS, CHANNELS, SIZE = 8, 4, 8
PROMPT = (1, 2, 3, 4, 5, 6)  # n = 6 prompt tokens; SOT at 0, EOT at 7
LAYOUT = TokenLayout(
    bindings=(TokenBinding((2,), ((1,),)), TokenBinding((5,), ((4,),))), prompt_positions=PROMPT, context_length=8
)
TAU_6 = 0.14 * (6 - 1)  # the reference's τ for n = 6, computed as it does

_generator = torch.Generator().manual_seed(17)
WEIGHTS = torch.randn(TOKENS, CHANNELS, generator=_generator, dtype=torch.float64)
BIAS = 2 * torch.randn(TOKENS, SIZE, SIZE, generator=_generator, dtype=torch.float64)
Z0 = torch.randn(1, CHANNELS, SIZE, SIZE, generator=_generator, dtype=torch.float64)
_raw = torch.rand(TOKENS, TOKENS, generator=_generator, dtype=torch.float64).tril() + 0.1 * torch.eye(TOKENS)
TEXT = _raw / _raw.sum(dim=-1, keepdim=True)  # a causal text self-attention T' with SOT and EOT rows
_far = torch.randn(1, CHANNELS, SIZE, SIZE, generator=_generator, dtype=torch.float64)


def toy_maps(z: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Cross-attention-like maps ``[1, K, H, W]``: a softmax over tokens at every pixel."""
    return torch.softmax(sharpness * (torch.einsum("kc,bchw->bkhw", WEIGHTS, z) + BIAS), dim=1)


def paper_text(mix: float) -> torch.Tensor:
    """A raw T' (SOT and EOT rows zero) whose processed T lies between the toy's own similarity at a far latent and
    the processed ``TEXT``: the cube root (the objective's power is 3) of that mix, at the prompt's positions."""
    far = row_normalize(cross_attention_similarity(toy_maps(_far, 1.0), PROMPT))[0]
    prepared = mix * text_attention_matrix(TEXT, PROMPT) + (1 - mix) * far
    raw = torch.zeros(TOKENS, TOKENS, dtype=torch.float64)
    raw[1:7, 1:7] = prepared.pow(1 / 3)
    return raw


class Toy:
    """``loss_and_grad`` for an objective at loop index 0 of 50; counts the forwards it makes."""

    def __init__(self, objective: Objective, sharpness: float = 1.0, text: torch.Tensor = TEXT) -> None:
        self.objective, self.sharpness, self.text = objective, sharpness, text
        self.forwards = 0

    def __call__(self, z: torch.Tensor) -> tuple[LossResult, torch.Tensor]:
        self.forwards += 1
        leaf = z.detach().requires_grad_(True)
        attn = {4: AttentionLevel(toy_maps(leaf, self.sharpness), 1)}
        result = self.objective.loss(attn, LAYOUT, 0, 50, text_self_attention=self.text)
        (grad,) = torch.autograd.grad(result.total.sum(), leaf)
        return result, grad


# --- Transcriptions of the reference loops, from the spec's text ------------------------------------------------


def reference_attend_and_excite(evaluate: Toy, z: torch.Tensor, alpha: float, threshold: float, cap: int = 20):
    """§4.3: refine only if L > 1 - T. While L > target: forward on the current z, recompute L, step if L != 0,
    stop after ``cap`` iterations. The ``while`` sees the L computed before the iteration's update."""
    loss = evaluate(z)[0].total
    target = max(0.0, 1.0 - threshold)
    iteration = 0
    if loss > target:
        while loss > target:
            iteration += 1
            result, grad = evaluate(z)
            loss = result.total
            if loss != 0:
                z = z - alpha * grad
            if iteration >= cap:
                break
    return z, iteration


def reference_divide_and_bind(evaluate: Toy, z: torch.Tensor, alpha: float, threshold: float, cap: int):
    """§5.4: refine when the indicator is below the threshold. Loop: forward, compute L, step with α, update the
    indicator (from that forward, so it lags one step), until indicator >= threshold or the cap."""
    indicator = evaluate(z)[0].metric
    iteration = 0
    if indicator < threshold:
        while indicator < threshold:
            iteration += 1
            result, grad = evaluate(z)
            if result.total != 0:
                z = z - alpha * grad
            indicator = result.metric
            if iteration >= cap:
                break
    return z, iteration


def reference_tsam(evaluate: Toy, z: torch.Tensor, alpha: float, tau: float = TAU_6):
    """§6.4: for cnt = 0..29: at cnt = 20 break if L > τ (L of iteration 19); otherwise forward, L, step."""
    loss = None
    updates = 0
    for cnt in range(30):
        if cnt == 20 and loss > tau:
            break
        result, grad = evaluate(z)
        loss = result.total
        z = z - alpha * grad
        updates += 1
    return z, updates


# --- Cases ------------------------------------------------------------------------------------------------------

# (objective, sharpness, step size, threshold passed to the transcription, its cap, the reference's update count)
AE_CASES = {
    "crossing": (AttendExciteObjective(thresholds=(0.48, 0.5, 0.8)), 0.2, 20.0, 0.48, 20, 12),
    "cap": (AttendExciteObjective(thresholds=(0.9, 0.5, 0.8)), 0.2, 20.0, 0.9, 20, 20),
}
DB_CASES = {
    "tv_bind crossing": (DivideBindObjective(thresholds=(0.26, 0.2, 0.3)), 0.2, 20.0, 0.26, 50, 4),
    "tv_bind cap": (DivideBindObjective(thresholds=(0.5, 0.2, 0.3)), 0.2, 20.0, 0.5, 50, 50),
    "max crossing": (DivideBindObjective(loss_mode="max", thresholds=(0.5, 0.5, 0.8)), 0.2, 20.0, 0.5, 20, 13),
    "max cap": (DivideBindObjective(loss_mode="max", thresholds=(0.9, 0.5, 0.8)), 0.2, 20.0, 0.9, 20, 20),
}


def _assert_same(refined_z: torch.Tensor, reference_z: torch.Tensor) -> None:
    assert torch.allclose(refined_z, reference_z, atol=1e-5, rtol=0), (refined_z - reference_z).abs().max()


@pytest.mark.parametrize("case", AE_CASES)
def test_attend_and_excite_matches_the_reference_loop(case: str) -> None:
    objective, sharpness, alpha, threshold, cap, expected = AE_CASES[case]
    ref_z, ref_updates = reference_attend_and_excite(Toy(objective, sharpness), Z0, alpha, threshold, cap)
    toy = Toy(objective, sharpness)
    z, iterations, result = refine(toy, Z0, objective, 0, 50, alpha)
    assert (iterations, ref_updates) == (expected, expected)
    _assert_same(z, ref_z)
    assert toy.forwards == 1 + iterations  # the lag costs no extra pass, and the reference's last pass is result
    assert result.total.item() == pytest.approx(toy(z)[0].total.item(), abs=1e-12)


@pytest.mark.parametrize("case", DB_CASES)
def test_divide_and_bind_matches_the_reference_loop(case: str) -> None:
    objective, sharpness, alpha, threshold, cap, expected = DB_CASES[case]
    ref_z, ref_updates = reference_divide_and_bind(Toy(objective, sharpness), Z0, alpha, threshold, cap)
    toy = Toy(objective, sharpness)
    refined = refine(toy, Z0, objective, 0, 50, alpha)
    assert (refined.iterations, ref_updates) == (expected, expected)
    _assert_same(refined.z, ref_z)
    assert toy.forwards == 1 + refined.iterations


TSAM_CASES = {
    # (loss type, sharpness, step size, text, the reference's update count, what the loss does)
    "code: L(z19) > tau >= L(z20)": ("code", 1.0, 1.25, TEXT, 20),
    "code: low early, runs to the cap": ("code", 1.0, 5.0, TEXT, 30),
    "code: stays high": ("code", 1.0, 0.2, TEXT, 20),
    "paper: L(z19) > tau >= L(z20)": ("paper", 1.0, 5.0, paper_text(0.4), 20),
    "paper: low early, runs to the cap": ("paper", 1.0, 5.0, paper_text(0.35), 30),
    "paper: stays high": ("paper", 1.0, 5.0, paper_text(0.45), 20),
}


@pytest.mark.parametrize("case", TSAM_CASES)
def test_tsam_matches_the_reference_loop(case: str) -> None:
    loss_type, sharpness, alpha, text, expected = TSAM_CASES[case]
    objective = TSAMObjective(loss_type=loss_type)
    ref_z, ref_updates = reference_tsam(Toy(objective, sharpness, text), Z0, alpha)
    toy = Toy(objective, sharpness, text)
    refined = refine(toy, Z0, objective, 0, 50, alpha)
    assert (refined.iterations, ref_updates) == (expected, expected)
    _assert_same(refined.z, ref_z)
    assert toy.forwards == 1 + refined.iterations


def test_tsam_crossing_case_is_the_one_the_issue_describes() -> None:
    """L(z19) > τ >= L(z20): the reference judges L(z19) and stops at 20; judging L(z20) would run on to 30."""
    objective = TSAMObjective()
    toy = Toy(objective, 1.0, TEXT)
    z, losses = Z0, []
    for _ in range(21):
        result, grad = toy(z)
        losses.append(result.total.item())
        z = z - 1.25 * grad
    assert losses[19] > TAU_6 >= losses[20]


# --- The fixed variant ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["attend_and_excite", "divide_and_bind", "tsam"])
def test_stop_rule_defaults_to_faithful_and_names_bad_values(method: str) -> None:
    objective = make_objective(method)
    refinement = objective.refinement(0, 50)
    assert objective.stop_rule == "faithful" and refinement is not None and refinement.lagged  # type: ignore[attr-defined]
    fixed = make_objective(method, stop_rule="fixed").refinement(0, 50)
    assert fixed is not None and not fixed.lagged
    with pytest.raises(ValueError, match=r"stop_rule must be 'faithful' or 'fixed', got 'late' \(default 'faithful'\)"):
        make_objective(method, stop_rule="late")


def test_fixed_stop_rule_takes_one_update_fewer_on_crossing_cases() -> None:
    """``stop_rule = fixed`` judges the newest latent: it stops as soon as the target is met, one update before the
    reference; at the cap both agree."""
    for objective, sharpness, alpha, _, _, expected in (AE_CASES["crossing"], DB_CASES["tv_bind crossing"]):
        fixed = dataclasses.replace(objective, stop_rule="fixed")
        assert refine(Toy(fixed, sharpness), Z0, fixed, 0, 50, alpha).iterations == expected - 1
    objective, sharpness, alpha, *_ = AE_CASES["cap"]
    fixed = dataclasses.replace(objective, stop_rule="fixed")
    assert refine(Toy(fixed, sharpness), Z0, fixed, 0, 50, alpha).iterations == 20


def test_fixed_tsam_stops_when_the_loss_is_below_tau() -> None:
    fixed = TSAMObjective(stop_rule="fixed")
    refined = refine(Toy(fixed, 1.0, TEXT), Z0, fixed, 0, 50, 5.0)  # the faithful rule runs this case to 30
    assert 1 < refined.iterations < 20
    assert refined.result.metric.item() <= TAU_6
    shorter = TSAMObjective(stop_rule="fixed", refinement_iterations=refined.iterations - 1)
    assert refine(Toy(shorter, 1.0, TEXT), Z0, shorter, 0, 50, 5.0).result.metric.item() > TAU_6


# --- Contract: no refinement, progress, tensor step sizes, non-finite values ------------------------------------


def test_no_refinement_step_evaluates_once() -> None:
    objective = AttendExciteObjective()
    toy = Toy(objective, 0.2)
    refined = refine(toy, Z0, objective, 5, 50, 20.0)  # loop index 5 is no refinement point
    assert (refined.iterations, toy.forwards) == (0, 1)
    assert torch.equal(refined.z, Z0) and refined.usable and not refined.non_finite
    assert refined.loss == refined.initial_loss == pytest.approx(refined.result.total.item())


def test_progress_callback_and_tensor_step_size() -> None:
    objective = AttendExciteObjective(thresholds=(0.9, 0.5, 0.8), max_refinement_steps=3)
    seen: list[tuple[int, int]] = []
    mask = torch.zeros_like(Z0)
    mask[..., :6] = 1.0  # the max's gradient sits at the bottom right, columns 5 to 7
    toy = Toy(objective, 0.2)
    refined = refine(toy, Z0, objective, 0, 50, 20.0 * mask, on_iteration=lambda done, cap: seen.append((done, cap)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(refined.z[..., 6:], Z0[..., 6:])  # outside the mask nothing moves
    assert not torch.equal(refined.z[..., :6], Z0[..., :6])


def test_non_finite_loss_ends_refinement_on_the_last_finite_latent() -> None:
    objective = AttendExciteObjective(thresholds=(0.9, 0.5, 0.8))
    toy = Toy(objective, 0.2)

    def breaks_on_third_call(z: torch.Tensor) -> tuple[LossResult, torch.Tensor]:
        result, grad = toy(z)
        if toy.forwards == 3:
            return LossResult(result.total * float("nan"), result.metric, result.terms), grad
        return result, grad

    refined = refine(breaks_on_third_call, Z0, objective, 0, 50, 20.0)
    capped = dataclasses.replace(objective, max_refinement_steps=1)
    one_update = refine(Toy(capped, 0.2), Z0, capped, 0, 50, 20.0)
    assert refined.non_finite and refined.usable and refined.iterations == 1
    assert torch.equal(refined.z, one_update.z) and refined.loss == one_update.loss


def test_non_finite_start_or_candidate_moves_nothing() -> None:
    objective = AttendExciteObjective(thresholds=(0.9, 0.5, 0.8))
    start = refine(Toy(objective, 0.2), Z0 * float("inf"), objective, 0, 50, 20.0)
    assert start.non_finite and not start.usable and start.iterations == 0
    huge = refine(Toy(objective, 0.2), Z0, objective, 0, 50, float("inf"))
    assert huge.non_finite and huge.usable and huge.iterations == 0 and torch.equal(huge.z, Z0)
