"""Fuzzing of Binding Loss Config's ``advanced`` input (issue #16): random keys, values, unicode and lengths.

Each generated case (``fuzz_inputs.config_cases``) goes through the node as ComfyUI runs it: ``VALIDATE_INPUTS``,
then ``configure``. It either builds a config, with finite values only, or is refused with a validation message
or ``ValueError`` that names the input; never another exception type (``fuzz_checks.check_config``).
Derandomized; ``benchmarks/fuzz.py`` runs 10,000 cases, also with ``advanced`` linked from another node.
"""

from __future__ import annotations

from typing import Any

import pytest
from devkit.fuzz_checks import REFUSED, VALID_CONFIG, check_config
from devkit.fuzz_inputs import ConfigCase, config_cases
from hypothesis import HealthCheck, event, given, settings

N_CASES = 600
FUZZ = settings(max_examples=N_CASES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def config_node(harness: Any) -> type:
    return harness.nodes.NODE_CLASS_MAPPINGS["BindingLossConfig"]


@FUZZ
@given(case=config_cases)
def test_advanced_builds_a_config_or_names_the_input(config_node: type, case: ConfigCase) -> None:
    outcome, _ = check_config(config_node, case.inputs())
    assert outcome in (VALID_CONFIG, REFUSED)
    event(outcome)


@FUZZ
@given(case=config_cases)
def test_no_config_holds_a_non_finite_value(config_node: type, case: ConfigCase) -> None:
    _, nonfinite = check_config(config_node, case.inputs())
    assert not nonfinite, f"{case} built a config with non-finite {nonfinite}"


@pytest.mark.parametrize("advanced", ["method = 0", " = 0"])
def test_linked_advanced_is_refused_naming_the_input(config_node: type, advanced: str) -> None:
    """With ``advanced`` linked from another node ComfyUI skips VALIDATE_INPUTS: ``configure`` alone must refuse it,
    naming ``advanced`` (a key that clashes with an argument of ``make_objective`` included)."""
    assert check_config(config_node, ConfigCase("syngen", advanced).inputs(), linked=True) == (REFUSED, [])
    with pytest.raises(ValueError, match="advanced: ") as refused:
        config_node().configure("syngen", 20.0, 0.5, advanced, 1.0)
    assert ("unknown parameter(s) ['method']" if "method" in advanced else "line 1: ") in str(refused.value)


@pytest.mark.parametrize("advanced", ["", "# nothing", "scale_factor = 10\nguided_fraction = 0.25",
                                      "thresholds = 0.1, 0.2, 0.3", "refine = false"])
def test_plain_advanced_text_builds_a_config(config_node: type, advanced: str) -> None:
    """The check accepts real configs (so the fuzz above can tell a refusal from a config)."""
    method = "attend_and_excite" if "thresholds" in advanced or "refine" in advanced else "syngen"
    assert check_config(config_node, ConfigCase(method, advanced).inputs()) == (VALID_CONFIG, [])


@pytest.mark.parametrize("advanced", ["no equals sign", "bogus_key = 1", "thresholds = abc"])
def test_bad_advanced_text_is_refused(config_node: type, advanced: str) -> None:
    assert check_config(config_node, ConfigCase("attend_and_excite", advanced).inputs()) == (REFUSED, [])
