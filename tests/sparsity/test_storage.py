"""Stored forms compute what the dense sparse model does: packed (exact with float32 values, float16 rounding
only otherwise), sparse_initializer; unpacking gives the dense tensors back; files shrink."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.core.errors import OptionError
from onnxprune.sparsity import packed, storage
from tests.retrain import conv_net
from tests.util import make_model, outputs, random_inputs
from tests.util import tensor as value_info


def sparse_net(density: float = 0.1, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """``conv_net`` without BN, its weights zeroed at random to ``density``."""
    model = conv_net(batchnorm=False, seed=seed)
    model.opset_import[0].version = opset
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.ndim >= 2:
            tensor.CopyFrom(numpy_helper.from_array(np.where(rng.random(values.shape) < density, values, 0)
                                                    .astype(np.float32), tensor.name))
    return model


def with_weights(model: onnx.ModelProto, change) -> onnx.ModelProto:
    """A copy of ``model`` whose weights (initializers of 2 or more dims) are ``change(weights)``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.ndim >= 2:
            tensor.CopyFrom(numpy_helper.from_array(change(values).astype(np.float32), tensor.name))
    return copy


def rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its sparse weights rounded to float16, what packed float16 values store."""
    return with_weights(model, lambda values: values.astype(np.float16))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_packed_float32_is_exact_and_float16_equals_the_rounded_weights(opset):
    dense = sparse_net(opset=opset)
    feeds = random_inputs(dense, batch=4)
    for value_type, reference in (("float32", dense), ("float16", rounded(dense))):
        stored = storage.encode(dense, "packed", value_type)
        onnx.checker.check_model(stored, full_check=True)
        assert not [t.name for t in stored.graph.initializer if t.name.startswith("conv")]  # all packed
        for expected, actual in zip(outputs(reference, feeds), outputs(stored, feeds), strict=True):
            np.testing.assert_array_equal(actual, expected)


def quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its sparse weights rounded to 255 levels symmetric per tensor, what int8 values store."""

    def levels(values: np.ndarray) -> np.ndarray:
        scale = np.float32(np.abs(values).max() / 127)
        return np.rint(values / scale).astype(np.float32) * scale

    return with_weights(model, levels)


@pytest.mark.parametrize("opset", [11, 13])
def test_packed_int8_equals_the_per_tensor_quantized_weights_at_two_bytes_a_nonzero(opset):
    dense = sparse_net(density=0.05, opset=opset)
    stored = storage.encode(dense, "packed", "int8")
    onnx.checker.check_model(stored, full_check=True)
    feeds = random_inputs(dense, batch=4)
    for expected, actual in zip(outputs(quantized(dense), feeds), outputs(stored, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    arrays = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert arrays["packed.values"].dtype == np.int8 and np.abs(arrays["packed.values"]).max() == 127
    assert arrays["packed.values"].nbytes + arrays["packed.deltas"].nbytes == 2 * len(arrays["packed.deltas"])
    back = {t.name: numpy_helper.to_array(t) for t in storage.decode(stored).graph.initializer}
    for tensor in quantized(dense).graph.initializer:
        np.testing.assert_allclose(back[tensor.name], numpy_helper.to_array(tensor), rtol=1e-6, atol=1e-7)


def test_packed_and_sparse_initializer_shrink_the_file():
    rng = np.random.default_rng(0)
    weight = np.where(rng.random((300, 200)) < 0.05, rng.standard_normal((300, 200)), 0).astype(np.float32)
    big = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [value_info("x", [1, 300])],
                     [value_info("y", [1, 200])], {"w": weight})
    sizes = {kind: storage.encode(big, kind).ByteSize() for kind in storage.STORAGES}
    assert sizes["dense"] > 240_000 and 36_000 > sizes["sparse-initializer"] > 12 * 2900
    assert sizes["packed"] < 3.2 * 3100 + 600  # 3 bytes a nonzero, fillers, the subgraph
    assert storage.encode(big, "packed", "int8").ByteSize() < 2.1 * 3100 + 700  # 2 bytes a nonzero, a Mul
    for expected, actual in zip(outputs(rounded(big), random_inputs(big)),
                                outputs(storage.encode(big, "packed"), random_inputs(big)), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * np.abs(expected).max())  # summation order
    dense = sparse_net()
    feeds = random_inputs(dense)
    sparse = storage.encode(dense, "sparse-initializer")
    assert len(sparse.graph.sparse_initializer) == 4  # the three weights and the all-zero fc.bias
    for expected, actual in zip(outputs(dense, feeds), outputs(sparse, feeds), strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("kind", ["packed", "sparse-initializer"])
def test_decode_gives_the_dense_tensors_back(kind):
    dense = sparse_net()
    back = storage.decode(storage.encode(dense, kind, "float32"))
    assert not back.graph.sparse_initializer and [n.op_type for n in back.graph.node] == [
        n.op_type for n in dense.graph.node]
    arrays = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    for tensor in dense.graph.initializer:
        np.testing.assert_array_equal(arrays[tensor.name], numpy_helper.to_array(tensor))


def test_gaps_longer_than_255_get_fillers():
    flat = np.zeros(2000, np.float32)
    flat[[0, 300, 301, 1999]] = [1.0, -2.0, 3.0, 4.0]
    values, deltas = packed.encode(flat, np.float32)
    assert len(values) == 4 + 1 + 6  # 300 needs one filler, 1999 - 301 = 1698 needs six
    assert deltas.max() <= 255
    np.testing.assert_array_equal(packed.decode(values, deltas, flat.size), flat)


def test_dense_tensors_and_old_opsets_are_left_or_refused():
    model = conv_net(batchnorm=False)
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "fc.bias"))
    assert storage.encode(model, "packed") == model  # nothing sparse: nothing packed
    old = sparse_net()
    old.opset_import[0].version = 10
    with pytest.raises(OptionError, match="packed storage needs opset >= 11"):
        storage.encode(old, "packed")
    with pytest.raises(OptionError, match="storage zip is unknown"):
        storage.encode(old, "zip")
