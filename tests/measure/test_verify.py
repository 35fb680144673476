"""Equivalence (Polygraphy tolerance semantics, the noise rule) and fidelity checks with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import InputError, VerificationError
from onnxprune.measure import noise
from onnxprune.measure.verify import (
    _diff_output,
    compare,
    compare_scaled,
    equivalent,
    fidelity,
    output_scaled_atol,
    run,
    session,
)

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((4, 3)).astype(np.float32)


def gemm_model(weight: np.ndarray = WEIGHT, out_name: str = "y") -> onnx.ModelProto:
    """y = x @ W, x: [N, 4] -> y: [N, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [out_name])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


FEEDS = [{"x": RNG.standard_normal((5, 4)).astype(np.float32)} for _ in range(2)]


def test_session_from_proto_bytes_and_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(gemm_model(), path)
    for source in (gemm_model(), gemm_model().SerializeToString(), path, str(path)):
        assert [o.name for o in session(source, threads=1, optimize=False).get_outputs()] == ["y"]


def test_session_failure_is_input_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        session(tmp_path / "bad.onnx")


def test_run_returns_outputs_by_name_and_ignores_extra_feeds():
    outs = run(gemm_model(), [dict(FEEDS[0], unused=np.zeros(1))])
    np.testing.assert_allclose(outs[0]["y"], FEEDS[0]["x"] @ WEIGHT, rtol=1e-5, atol=1e-6)


def test_run_bad_feed_is_input_error():
    with pytest.raises(InputError, match="cannot run"):
        run(gemm_model(), [{"x": np.zeros((2, 5), np.float32)}])


def test_compare_identical_passes():
    result = compare(gemm_model(), gemm_model(), FEEDS, atol=1e-6, rtol=1e-6)
    assert result.passed
    (diff,) = result.outputs
    assert diff.max_abs == 0.0 and diff.mismatched == 0 and diff.total == 30
    assert result.to_dict()["outputs"][0]["name"] == "y"


def test_compare_detects_perturbed_weight():
    weight = WEIGHT.copy()
    weight[1, 2] += 0.1
    result = compare(gemm_model(), gemm_model(weight), FEEDS)
    assert not result.passed
    assert result.outputs[0].mismatched == 10  # column 2 of every row, 5 rows x 2 feeds
    assert result.outputs[0].max_abs > 1e-3


def test_compare_shape_mismatch_fails_cleanly():
    result = compare(gemm_model(), gemm_model(np.ones((4, 2), np.float32)), FEEDS)
    assert not result.passed and result.outputs[0].max_abs == float("inf")


def test_compare_renamed_output_fails_both_ways():
    result = compare(gemm_model(), gemm_model(out_name="z"), FEEDS)
    assert [(d.name, d.passed) for d in result.outputs] == [("y", False), ("z", False)]


def test_compare_needs_feeds():
    with pytest.raises(InputError, match="no feeds"):
        compare(gemm_model(), gemm_model(), [])


@pytest.mark.parametrize(
    ("atol", "rtol", "passed"),
    [(0.2, 0.0, True), (0.0, 0.2, True), (0.05, 0.05, False), (0.2, 0.2, True)],
)
def test_element_fails_only_if_both_tolerances_fail(atol, rtol, passed):
    ref, cand = np.array([1.0], np.float32), np.array([1.1], np.float32)
    assert _diff_output("y", [ref], [cand], atol, rtol).passed is passed


def test_relative_tolerance_uses_reference_magnitude():
    ref, cand = np.array([100.0, 0.0]), np.array([100.5, 0.0])
    diff = _diff_output("y", [ref], [cand], atol=0.0, rtol=0.01)
    assert diff.passed and diff.max_abs == pytest.approx(0.5)
    assert diff.max_rel == pytest.approx(0.005)


def test_nan_and_inf_handling():
    ref = np.array([np.nan, np.inf, 1.0])
    assert _diff_output("y", [ref], [ref.copy()], 0.0, 0.0).passed
    one_nan = _diff_output("y", [ref], [np.array([0.0, np.inf, 1.0])], 1e9, 1e9)
    assert not one_nan.passed and one_nan.mismatched == 1
    inf_vs_big = _diff_output("y", [ref], [np.array([np.nan, 1e30, 1.0])], 1e9, 1e9)
    assert not inf_vs_big.passed


def test_output_scaled_atol_ignores_non_finite():
    assert output_scaled_atol([np.array([-4.0, 2.0]), np.array([np.inf, 3.0])], 1e-5) == 4e-5
    assert output_scaled_atol([np.array([np.nan])], 1e-5) == 0.0


def test_compare_scaled_tolerance_follows_output_scale():
    big = WEIGHT * 1e4
    near = big.copy()
    near[0, 0] *= 1 + 1e-7  # tiny relative to max |y|
    result = compare_scaled(gemm_model(big), gemm_model(near), FEEDS, rel=1e-5)
    assert result.passed and result.atol is None
    peak = max(np.abs(f["x"] @ big).max() for f in FEEDS)
    assert result.outputs[0].atol == pytest.approx(1e-5 * peak, rel=1e-5)
    far = big.copy()
    far[0, 0] *= 1.01
    assert not compare_scaled(gemm_model(big), gemm_model(far), FEEDS, rel=1e-5).passed


def test_equivalent_defaults_to_the_noise_rule():
    result = equivalent(gemm_model(), gemm_model(), FEEDS)
    (diff,) = result.outputs
    assert result.passed and result.rule == "noise" and result.noise_multiple == noise.NOISE_MULTIPLE
    assert diff.noise_floor == 0.0  # one MatMul: onnxruntime's optimized and plain runs agree bit for bit
    peak = max(np.abs(f["x"] @ WEIGHT).max() for f in FEEDS)
    assert diff.atol == pytest.approx(noise.SCALE_FLOOR * peak, rel=1e-6) and diff.margin == float("inf")
    assert {"noise_floor", "atol", "max_abs", "margin"} <= set(result.to_dict()["outputs"][0])


def test_noise_rule_rejects_a_changed_weight():
    weight = WEIGHT.copy()
    weight[1, 2] *= 1.001
    (diff,) = equivalent(gemm_model(), gemm_model(weight), FEEDS).outputs
    assert not diff.passed and diff.margin < 1


def test_noise_rule_fails_renamed_output_both_ways():
    result = equivalent(gemm_model(), gemm_model(out_name="z"), FEEDS)
    assert [(d.name, d.passed, d.noise_floor) for d in result.outputs] == [("y", False, 0.0), ("z", False, None)]


@pytest.mark.parametrize(
    ("atol", "rtol", "rule", "applied"),
    [
        (None, 1e-3, "scaled", (None, 1e-3)),
        (1e-4, None, "tolerance", (1e-4, 0.0)),
        (1e-4, 1e-3, "tolerance", (1e-4, 1e-3)),
    ],
)
def test_equivalent_uses_a_given_tolerance(atol, rtol, rule, applied):
    result = equivalent(gemm_model(), gemm_model(), FEEDS, atol=atol, rtol=rtol)
    assert result.passed and result.rule == rule and (result.atol, result.rtol) == applied
    assert result.outputs[0].noise_floor is None


def test_fidelity_identical_models():
    result = fidelity(gemm_model(), gemm_model(), FEEDS)
    assert result.cosine == pytest.approx(1.0)
    assert result.top1_agreement == 1.0 and result.max_abs == 0.0


def test_fidelity_opposite_model():
    result = fidelity(gemm_model(), gemm_model(-WEIGHT), FEEDS)
    assert result.cosine == pytest.approx(-1.0)
    assert result.top1_agreement < 1.0 and result.max_abs > 0


def test_fidelity_shape_mismatch_raises():
    with pytest.raises(VerificationError, match="expected shape"):
        fidelity(gemm_model(), gemm_model(np.ones((4, 2), np.float32)), FEEDS)
