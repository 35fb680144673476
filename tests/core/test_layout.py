"""core.layout: where each op's channels sit in its weight, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxprune.core.layout import layout_of, layout_of_filters
from tests.util import make_model, outputs, tensor

# op, weight shape, attributes, input shape
CASES = {
    "conv": ("Conv", (6, 4, 3, 3), {}, [2, 4, 5, 5]),
    "conv-group2": ("Conv", (6, 2, 3, 3), {"group": 2}, [2, 4, 5, 5]),
    "conv-depthwise": ("Conv", (8, 1, 3, 3), {"group": 4}, [2, 4, 5, 5]),
    "conv-transpose": ("ConvTranspose", (4, 6, 3, 3), {"strides": [2, 2]}, [2, 4, 5, 5]),
    "conv-transpose-group2": ("ConvTranspose", (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}, [2, 4, 5, 5]),
    "conv-transpose-group2-wide": ("ConvTranspose", (6, 2, 2, 2), {"group": 2, "strides": [2, 2]}, [2, 6, 4, 4]),
    "conv-transpose-depthwise": ("ConvTranspose", (4, 2, 3, 3), {"group": 4}, [2, 4, 5, 5]),
    "gemm": ("Gemm", (4, 6), {}, [3, 4]),
    "gemm-transB": ("Gemm", (6, 4), {"transB": 1}, [3, 4]),
    "matmul": ("MatMul", (4, 6), {}, [3, 4]),
}


def case(name):
    op, shape, attrs, input_shape = CASES[name]
    layout = layout_of(op, shape, attrs.get("group", 1), bool(attrs.get("transB", 0)))
    assert layout is not None
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = np.random.default_rng(1).standard_normal(input_shape).astype(np.float32)
    return op, attrs, layout, weight, x


def run(op, attrs, weight, x) -> np.ndarray:
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    model = make_model([node], [tensor("x", list(x.shape))], [tensor("y", [None] * x.ndim)], {"w": weight})
    return outputs(model, {"x": x})[0]


def channel(array: np.ndarray, op: str, index: int) -> np.ndarray:
    """Channel ``index`` of a data tensor: axis 1 of a conv's, the last of a Gemm's or MatMul's."""
    return array[:, index] if op in ("Conv", "ConvTranspose") else array[..., index]


@pytest.mark.parametrize("name", CASES)
def test_output_slice_is_all_an_output_channel_is_computed_with(name):
    op, attrs, layout, weight, x = case(name)
    reference = run(op, attrs, weight, x)
    assert reference.shape[1 if op in ("Conv", "ConvTranspose") else -1] == layout.out_channels
    for out in range(layout.out_channels):
        zeroed = weight.copy()
        zeroed[layout.output_slice(out)] = 0
        y = run(op, attrs, zeroed, x)
        others = [c for c in range(layout.out_channels) if c != out]
        assert not channel(y, op, out).any()
        np.testing.assert_array_equal(channel(y, op, others), channel(reference, op, others))


@pytest.mark.parametrize("name", CASES)
def test_input_slice_is_all_that_reads_an_input_channel(name):
    op, attrs, layout, weight, x = case(name)
    assert x.shape[1 if op in ("Conv", "ConvTranspose") else -1] == layout.in_channels
    for source in range(layout.in_channels):
        zeroed = weight.copy()
        zeroed[layout.input_slice(source)] = 0
        silenced = x.copy()
        channel(silenced, op, source)[...] = 0
        np.testing.assert_allclose(run(op, attrs, zeroed, x), run(op, attrs, weight, silenced), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_slices_partition_the_weight(name):
    _, _, layout, weight, _ = case(name)
    for slicer, count in ((layout.output_slice, layout.out_channels), (layout.input_slice, layout.in_channels)):
        hits = np.zeros(weight.shape, dtype=int)
        for index in range(count):
            hits[slicer(index)] += 1
        assert (hits == 1).all()
    assert layout.filter_size * layout.out_channels == weight.size == layout.column_size * layout.in_channels


@pytest.mark.parametrize("name", CASES)
def test_filters_are_the_output_slices_in_canonical_layout(name):
    op, attrs, layout, weight, _ = case(name)
    filters = layout.filters(weight)
    assert filters.shape[:2] == (layout.out_channels, layout.in_per_group)
    for out in range(layout.out_channels):
        np.testing.assert_array_equal(filters[out], weight[layout.output_slice(out)])
    np.testing.assert_array_equal(layout.from_filters(filters), weight)
    assert layout_of_filters(op, filters.shape, layout.groups, bool(attrs.get("transB", 0))) == layout
    inputs = layout.filter_inputs()
    for out in range(layout.out_channels):
        for column, source in enumerate(inputs[out]):
            marked = np.zeros(weight.shape, dtype=bool)
            marked[layout.input_slice(source)] = True
            assert layout.filters(marked)[out, column].all()


@pytest.mark.parametrize(("name", "axis", "expected"), [
    ("conv-group2", 0, list(range(6))),
    ("conv-group2", 1, None),
    ("conv-depthwise", 1, [0] * 8),
    ("conv-transpose", 1, list(range(6))),
    ("conv-transpose-group2", 1, [0, 1, 2, 0, 1, 2]),
    ("conv-transpose-group2", 0, None),
    ("conv-transpose-depthwise", 0, [0, 0, 1, 1, 2, 2, 3, 3]),
    ("gemm", 1, list(range(6))),
    ("gemm-transB", 0, list(range(6))),
])
def test_output_positions(name, axis, expected):
    _, _, layout, _, _ = case(name)
    positions = layout.output_positions(axis)
    assert (positions if positions is None else positions.tolist()) == expected


def test_grouped_conv_transpose_counts():
    layout = layout_of("ConvTranspose", (6, 2, 3, 3), 2)
    assert layout is not None
    assert (layout.in_channels, layout.out_channels, layout.in_per_group, layout.out_per_group) == (6, 4, 3, 2)
    assert (layout.out_axis, layout.in_axis, layout.is_depthwise) == (1, 0, False)
    assert layout_of("ConvTranspose", (4, 2, 3, 3), 4).is_depthwise


@pytest.mark.parametrize(("op", "shape", "group"), [
    ("Conv", (6, 4, 3, 3), 4),  # 6 filters do not split into 4 groups
    ("ConvTranspose", (6, 4, 3, 3), 4),
    ("Conv", (6,), 1),
    ("Gemm", (2, 3, 4), 1),
    ("Relu", (4, 4), 1),
])
def test_impossible_layouts_are_none(op, shape, group):
    assert layout_of(op, shape, group) is None


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_positions_agree_with_each_channels_slice(name):
    """The vectorised positions are what indexing each filter by ``output_slice`` touches."""
    _, _, layout, _, _ = case(name)
    for axis in range(len(layout.shape)):
        spans = []
        for channel in range(layout.out_channels):
            index = layout.output_slice(channel)[axis]
            spans.append([index] if isinstance(index, int) else list(range(layout.shape[axis])[index]))
        expected = [span[0] for span in spans] if all(len(span) == 1 for span in spans) else None
        positions = layout.output_positions(axis)
        assert (positions if positions is None else positions.tolist()) == expected, axis
