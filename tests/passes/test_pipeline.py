"""pipeline: per-pass options are checked against each pass's signature before any work."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from onnx import helper

from onnxprune.core.errors import InputError
from onnxprune.core.model import to_graph
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport, PassSpec
from tests.util import assert_equivalent, make_model, op_counts, tensor

WIDTH = 256  # Expand's result: 256 float32 = 1024 bytes


def expand_model():
    """``y = x + Expand(c, [256])``: the Expand folds only when 1024 bytes are within the size limit."""
    nodes = [
        helper.make_node("Expand", ["c", "shape"], ["e"], name="expand"),
        helper.make_node("Add", ["x", "e"], ["y"], name="add"),
    ]
    initializers = {"c": np.array([0.5], np.float32), "shape": np.array([WIDTH], np.int64)}
    return make_model(nodes, [tensor("x", [WIDTH])], [tensor("y", [WIDTH])], initializers)


@pytest.mark.parametrize(("size_limit", "expands"), [(None, 0), (WIDTH * 4, 0), (WIDTH * 4 - 1, 1)])
def test_size_limit_reaches_fold_constants(size_limit, expands):
    model = expand_model()
    options = None if size_limit is None else {"fold_constants": {"size_limit": size_limit}}
    result = pipeline.optimize(model, passes=["fold_constants"], options=options)
    assert op_counts(result.model)["Expand"] == expands
    assert_equivalent(model, result.model, rel=1e-6)
    if expands:
        assert any(f"over {size_limit} bytes" in line for line in result.reports[0].skipped), result.reports[0].skipped


def test_run_passes_forwards_options():
    graph = to_graph(expand_model())
    reports, _ = pipeline.run_passes(graph, ["fold_constants"], options={"fold_constants": {"size_limit": 16}})
    assert reports[0].rewrites == []
    assert [node.op for node in graph.nodes] == ["Expand", "Add"]


def test_misspelt_option_names_pass_option_and_accepted_ones():
    with pytest.raises(InputError) as error:
        pipeline.optimize(expand_model(), options={"fold_constants": {"size_limt": 16}})
    message = str(error.value)
    assert "pass 'fold_constants' has no option 'size_limt'" in message
    assert "did you mean 'size_limit'?" in message
    assert message.endswith("it accepts: size_limit")


def test_option_of_a_pass_without_options():
    with pytest.raises(InputError, match="pass 'eliminate' has no option 'aggressive'; it takes no options$"):
        pipeline.optimize(expand_model(), options={"eliminate": {"aggressive": True}})


@pytest.mark.parametrize(
    ("passes", "skip"), [(None, ["fold_constants"]), (["eliminate"], ()), (["fold_constants"], ["fold_constants"])]
)
def test_option_of_a_pass_not_run(passes, skip):
    with pytest.raises(InputError, match=r"pass 'fold_constants' \('size_limit'\), which is not run"):
        pipeline.optimize(expand_model(), passes, skip, options={"fold_constants": {"size_limit": 16}})


def test_option_of_an_unknown_pass():
    with pytest.raises(InputError, match="unknown pass 'fold_constant'; known passes: fold_constants, "):
        pipeline.optimize(expand_model(), options={"fold_constant": {"size_limit": 16}})


@pytest.mark.parametrize(
    "call",
    [
        lambda: pipeline.optimize(expand_model(), passes=["fold_constant"]),
        lambda: pipeline.optimize(expand_model(), skip=["fold_constant"]),
        lambda: pipeline.run_passes(to_graph(expand_model()), ["fold_constant"]),
    ],
    ids=["optimize", "skip", "run_passes"],
)
def test_unknown_pass(call):
    with pytest.raises(InputError, match="unknown pass fold_constant; known passes: fold_constants, "):
        call()


def test_options_not_a_mapping():
    with pytest.raises(InputError, match="options of pass 'fold_constants' must map option names to values"):
        pipeline.optimize(expand_model(), options={"fold_constants": 16})


def test_checked_before_any_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was read before the options were checked")

    monkeypatch.setattr(pipeline, "to_graph", fail)
    monkeypatch.setattr(pipeline, "prepare", fail)
    with pytest.raises(InputError):
        pipeline.optimize(expand_model(), options={"fold_constants": {"size_limt": 16}})
    with pytest.raises(InputError):
        pipeline.run_passes(to_graph(expand_model()), ["eliminate"], options={"eliminate": {"x": 1}})


def test_registry_reads_options_from_signatures():
    assert {name: spec.options for name, spec in pipeline.PASSES.items() if spec.options} == {
        "fold_constants": ("size_limit",)
    }
    assert list(pipeline.REGISTRY) == list(pipeline.PASSES)


def loose_run(graph, **options) -> PassReport:
    return PassReport("loose")


def positional_run(graph, limit: int = 1) -> PassReport:
    return PassReport("positional")


@pytest.mark.parametrize("run", [loose_run, positional_run])
def test_spec_refuses_options_that_are_not_keyword_only(run):
    with pytest.raises(TypeError, match="options must be keyword-only with defaults"):
        PassSpec.of(SimpleNamespace(NAME="loose", run=run, __name__="loose"))
