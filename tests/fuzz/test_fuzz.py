"""Fuzzing: random valid CNN graphs through every exact pass, the pipeline and channel pruning.

Derandomized, so CI sees the same graphs on every run (about 100 cases: each pass case runs all
13 passes and the pipeline on one graph). ``benchmarks/fuzz.py`` runs the same properties on
thousands of fresh graphs and shrinks what fails.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.graphs import graphs
from tests.fuzz.properties import PASS_PROPERTIES, check_pass, check_prune, ratios
from tests.fuzz.regressions import REGRESSIONS

CI = settings(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(CI, max_examples=40)
@given(graphs())
def test_every_exact_pass_and_the_pipeline_preserve_outputs(model):
    for name in PASS_PROPERTIES:
        check_pass(model, name)


@settings(CI, max_examples=60)
@given(graphs(), ratios())
def test_pruning_equals_the_zeroed_original(model, ratio):
    check_prune(model, ratio)


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else [])
    for case in REGRESSIONS])
def test_shrunk_failures_found_by_fuzzing(case):
    case.check(case.build())
