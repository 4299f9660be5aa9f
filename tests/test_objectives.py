"""Objective classes, ObjectiveChain and the registry (binding_losses.objectives)."""

from __future__ import annotations

import pytest
import torch
from binding_guidance.binding_losses import (
    METHODS,
    AttentionLevel,
    ObjectiveChain,
    TokenBinding,
    TokenLayout,
    attribute_words,
    default_params,
    make_objective,
    subject_words,
)
from binding_guidance.binding_losses.subjects import eot_columns

# "a red apple and a green leather bag": 2 red, 3 apple, 6 green, 7 leather, 8 bag
LAYOUT = TokenLayout(
    bindings=(TokenBinding((3,), ((2,),)), TokenBinding((8,), ((6,), (7,)))),
    prompt_positions=tuple(range(1, 9)),
)


def attention(batch: int = 2, dtype: torch.dtype = torch.float32) -> dict[int, AttentionLevel]:
    gen = torch.Generator().manual_seed(0)

    def level(size: int, count: int) -> AttentionLevel:
        logits = torch.randn(batch, 77, size, size, generator=gen)
        return AttentionLevel(mean=torch.softmax(logits, dim=1).to(dtype), count=count)

    return {4: level(16, 40), 2: level(32, 40), 1: level(64, 40)}


def test_registry_names_and_defaults() -> None:
    assert METHODS == {"syngen", "syngen_entropy", "divide_and_bind", "attend_and_excite", "tsam"}
    # main_factor is a sampler setting (GuidanceConfig / Binding Guidance Options), not a method hyperparameter.
    assert default_params("syngen") == {"scale_factor": 20.0, "guided_fraction": 0.5, "include_entities": False}
    assert not any("main_factor" in default_params(method) for method in METHODS)
    entropy = default_params("syngen_entropy")
    assert entropy["lambda_entropy"] == 0.05 and entropy["gamma_entropy"] == 0.05
    assert entropy["entropy_neg_mode"] == "as_written"
    ae = default_params("attend_and_excite")
    assert ae["thresholds"] == (0.05, 0.5, 0.8) and ae["max_refinement_steps"] == 20 and ae["scale_factor"] == 20.0
    db = default_params("divide_and_bind")
    assert db["loss_mode"] == "tv_bind" and db["tv_variant"] == "faithful" and db["thresholds"] == (0.05, 0.2, 0.3)
    assert db["refinement_caps"] == "paper" and db["bind_weights"] == (1.0, 5.0, 10.0)
    tsam = default_params("tsam")
    assert tsam["scale_factor"] == 5.0 and tsam["guided_fraction"] == 0.6 and tsam["loss_type"] == "code"
    for method in METHODS:
        objective = make_objective(method, **default_params(method))
        assert objective.name == method


def test_make_objective_rejects_unknown() -> None:
    with pytest.raises(ValueError, match=r"bogus.*valid parameters.*scale_factor"):
        make_objective("syngen", bogus=1)
    with pytest.raises(ValueError, match="unknown method"):
        make_objective("nope")
    with pytest.raises(ValueError, match="entropy_neg_mode"):
        make_objective("syngen_entropy", entropy_neg_mode="sideways")
    with pytest.raises(ValueError, match="tv_variant"):
        make_objective("divide_and_bind", tv_variant="nope")
    with pytest.raises(ValueError, match="stop_rule"):
        make_objective("tsam", stop_rule="nope")


def test_tsam_paper_defaults() -> None:
    paper = make_objective("tsam", loss_type="paper")
    assert paper.step_size(0, 50) == 10.0 and paper.guides(24, 50) and not paper.guides(25, 50)
    assert make_objective("tsam", loss_type="paper", scale_factor=40.0).step_size(0, 50) == 40.0


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_objective_runs_and_backpropagates(method: str, dtype: torch.dtype) -> None:
    objective = make_objective(method)
    levels = objective.levels(4)
    assert 4 in levels
    attn = {k: v for k, v in attention(dtype=dtype).items() if k in levels}
    for level in attn.values():
        level.mean.requires_grad_()
    text = torch.softmax(torch.randn(77, 77).masked_fill(~torch.ones(77, 77, dtype=torch.bool).tril(), -1e9), -1)
    result = objective.loss(attn, LAYOUT, 3, 50, text_self_attention=text)
    assert result.total.shape == (2,) and result.total.dtype == torch.float32
    assert result.metric.shape == (2,)
    assert torch.isfinite(result.total).all()
    result.total.sum().backward()
    grad = attn[4].mean.grad
    assert grad is not None and torch.isfinite(grad.float()).all() and grad.abs().sum() > 0


def test_levels() -> None:
    assert make_objective("syngen").levels(4) == {4}
    assert make_objective("divide_and_bind").levels(4) == {4, 2, 1}
    assert make_objective("divide_and_bind").levels(1) == {1}
    assert make_objective("tsam").levels(8) == {8}


def test_token_selection_from_layout() -> None:
    assert subject_words(LAYOUT) == ((3,), (8,))
    assert attribute_words(LAYOUT) == ((2,), (6,))
    explicit = TokenLayout(bindings=LAYOUT.bindings, prompt_positions=LAYOUT.prompt_positions, subjects=((8,), (5,)))
    assert subject_words(explicit) == ((8,), (5,))
    assert attribute_words(explicit) == ((6,), None)
    bare = TokenLayout(bindings=(TokenBinding((4,)),), prompt_positions=(1, 2, 3, 4))
    assert attribute_words(bare) == (None,)


def test_eot_columns_per_chunk() -> None:
    layout = TokenLayout(bindings=(), prompt_positions=(1, 2, 3, 78, 79))
    assert eot_columns(layout, 154) == [(1, 4), (1, 3)]
    assert eot_columns(TokenLayout(bindings=(), prompt_positions=(1, 2)), 154) == [(1, 3), (1, 1)]
    objective = make_objective("attend_and_excite", normalize_eot=True)
    result = objective.loss(attention(), LAYOUT, 0, 50)
    assert torch.isfinite(result.total).all()


def test_empty_layouts_give_zero_losses() -> None:
    empty = TokenLayout(bindings=(), prompt_positions=(1, 2, 3))
    attn = attention()
    attn[4].mean.requires_grad_()
    for method in ("syngen", "syngen_entropy", "attend_and_excite", "divide_and_bind"):
        result = make_objective(method).loss(attn, empty, 0, 50)
        assert result.total.shape == (2,) and torch.all(result.total == 0), method
        result.total.sum().backward()


def test_chain_weights_levels_and_schedule() -> None:
    syngen = make_objective("syngen")
    dnb = make_objective("divide_and_bind")
    chain = ObjectiveChain([(1.0, syngen), (0.5, dnb)])
    assert chain.levels(4) == {4, 2, 1}
    attn = attention()
    result = chain.loss(attn, LAYOUT, 12, 50)
    expected = syngen.loss(attn, LAYOUT, 12, 50).total + 0.5 * dnb.loss(attn, LAYOUT, 12, 50).total
    assert torch.allclose(result.total, expected)
    assert torch.allclose(result.metric, syngen.loss(attn, LAYOUT, 12, 50).metric)
    assert "0.syngen.positive" in result.terms and "1.divide_and_bind.tv" in result.terms
    assert chain.step_size(10, 50) == 20.0 and chain.guides(24, 50) and not chain.guides(25, 50)
    assert chain.refinement(0, 50) is None
    reverse = ObjectiveChain([(1.0, dnb), (1.0, syngen)])
    assert reverse.step_size(10, 50) == pytest.approx(18.952142, abs=1e-6)
    refinement = reverse.refinement(20, 50)
    assert refinement is not None and refinement.max_iterations == 20
    assert reverse.name == "divide_and_bind+syngen"
    with pytest.raises(ValueError):
        ObjectiveChain([])


def test_refinement_counts_and_caps() -> None:
    objective = make_objective("attend_and_excite", max_refinement_steps=3)
    refinement = objective.refinement(10, 50)
    assert refinement is not None
    attn = {4: attention()[4]}
    layout = TokenLayout(bindings=(TokenBinding((3,)),), prompt_positions=(1, 2, 3))
    result = objective.loss(attn, layout, 10, 50)
    runs = 0
    while refinement.continues(result, runs):
        runs += 1
    assert runs == (3 if bool((result.metric > 0.5).any()) else 0)


def test_parameters_are_coerced_and_validated() -> None:
    dnb = make_objective("divide_and_bind", thresholds="0.1, 0.2, 0.3", scale_factor=10, refine="false")
    assert dnb.thresholds == (0.1, 0.2, 0.3) and dnb.scale_factor == 10.0 and dnb.refine is False  # type: ignore[attr-defined]
    assert make_objective("attend_and_excite", max_refinement_steps=5.0).max_refinement_steps == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="scale_factor"):
        make_objective("syngen", scale_factor="abc")
    with pytest.raises(ValueError, match="thresholds"):
        make_objective("attend_and_excite", thresholds="1, 2")
    with pytest.raises(ValueError, match="smooth"):
        make_objective("tsam", smooth=3)


def test_syngen_ignores_entities_without_modifiers_unless_asked() -> None:
    """Reference default (include_entities=False): a noun with no modifier forms no set and adds no loss."""
    attn = attention()
    with_entity = TokenLayout(bindings=(*LAYOUT.bindings, TokenBinding((1,))), prompt_positions=LAYOUT.prompt_positions)
    plain = make_objective("syngen")
    assert torch.allclose(plain.loss(attn, with_entity, 0, 50).total, plain.loss(attn, LAYOUT, 0, 50).total)
    entities = make_objective("syngen", include_entities=True)
    assert not torch.allclose(entities.loss(attn, with_entity, 0, 50).total, plain.loss(attn, LAYOUT, 0, 50).total)
    assert not plain.active(TokenLayout(bindings=(TokenBinding((1,)),), prompt_positions=(1, 2)))


def test_bad_ranges_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="scale_factor"):
        make_objective("divide_and_bind", scale_factor=-1)
    with pytest.raises(ValueError, match="max_refinement_steps must be ≥ 1"):
        make_objective("attend_and_excite", max_refinement_steps=0)
    with pytest.raises(ValueError, match="guided_fraction"):
        make_objective("tsam", guided_fraction=1.5)


def test_the_worked_example_of_adding_a_method_works(tmp_path, monkeypatch) -> None:
    """docs/architecture.md "Adding a method": one loss file, one objective beside it and one registry line."""
    import importlib.util
    import re

    from binding_guidance.binding_losses import objectives
    from comfy_env import PACK_ROOT

    page = (PACK_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# binding_losses/peak\.py\n.*?)```", page, re.S)
    assert code is not None, "the worked example is missing from docs/architecture.md"
    path = tmp_path / "peak.py"
    path.write_text(code.group(1))
    spec = importlib.util.spec_from_file_location("binding_guidance.binding_losses.peak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(objectives._REGISTRY, "peak", module.PeakObjective)
    peak = make_objective("peak", target="0.7")
    result = peak.loss({4: attention()[4]}, LAYOUT, 0, 50)
    assert result.total.shape == (2,) and bool((result.total > 0).all())
    assert peak.step_size(0, 50) == 20.0 and peak.guides(24, 50) and not peak.guides(25, 50)
    with pytest.raises(ValueError, match=r"target must be ≥ 0 and ≤ 1, got nan \(default 0.5\)"):
        make_objective("peak", target="nan")
