"""Builders of layout ops: Slice, channel shuffle, Reshape round trips, Transpose (channels-last, H/W swap).

These move or select elements without computing, so they are where the passes' pattern matching
(cancel_*, merge_slices, sink_reshapes) and the channel analysis' index bookkeeping are fuzzed.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz.builder import Draw, Feature, GraphBuilder
from tests.fuzz.geometry import INT_MAX, MAX_SIZE, divisors, slice_len


def _slice_axis(draw: Draw, size: int) -> tuple[int, int, int]:
    """(start, end, step) of a non-empty slice, spelled with negative indices and INT_MAX sometimes."""
    step = draw(st.sampled_from([1, 2, -1]))
    start = draw(st.integers(0, size - 1))
    if step > 0:
        end = draw(st.integers(start + 1, size))
        end = INT_MAX if end == size and draw(st.booleans()) else end
    else:
        end = draw(st.integers(-1, start - 1))
        end = -INT_MAX if end == -1 else end
    if draw(st.booleans()):
        start -= size
    return start, end, step


def slice_(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Slice on the channel and/or spatial axes, with negative axes, reversed steps, omitted optional inputs."""
    dims = {1: x.c, 2: x.h, 3: x.w}
    sizes = dict(dims)
    axes = draw(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2, unique=True))
    spans = {axis: _slice_axis(draw, dims[axis]) for axis in axes}
    for axis, (start, end, step) in spans.items():
        sizes[axis] = slice_len(sizes[axis], start, end, step)
    if draw(st.booleans()) and draw(st.booleans()):  # every axis from 0, without the axes input
        full = [spans.get(axis, (0, INT_MAX, 1)) for axis in range(4)]
        if all(span[:2] == (0, INT_MAX) for span in full):  # onnxruntime's SliceElimination would drop the steps
            full[axes[0]] = (0, dims[axes[0]], full[axes[0]][2])
        inputs = [x.name, b.ints([s[0] for s in full]), b.ints([s[1] for s in full]), "", b.ints([s[2] for s in full])]
        return Feature(b.op("Slice", inputs), sizes[1], sizes[2], sizes[3])
    name = x.name
    for chunk in [axes] if len(axes) == 1 or draw(st.booleans()) else [[axis] for axis in axes]:  # a chain too
        named = [axis - 4 if draw(st.booleans()) else axis for axis in chunk]
        inputs = [name, b.ints([spans[a][0] for a in chunk]), b.ints([spans[a][1] for a in chunk]), b.ints(named)]
        steps = [spans[a][2] for a in chunk]
        if steps != [1] * len(chunk) or draw(st.booleans()):
            inputs.append(b.ints(steps))
        name = b.op("Slice", inputs)
    return Feature(name, sizes[1], sizes[2], sizes[3])


def shuffle(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Channel shuffle: Reshape to (groups, c/groups), swap them with Transpose, Reshape back."""
    groups = draw(st.sampled_from([g for g in divisors(x.c) if 1 < g < x.c]))
    split = [b.batch_target, groups, x.c // groups, x.h, x.w]
    if draw(st.booleans()):
        split[draw(st.sampled_from([2, 1, 3, 4]))] = -1
    grouped = b.op("Reshape", [x.name, b.ints(split, "shape")])
    swapped = b.op("Transpose", [grouped], perm=[0, 2, 1, 3, 4])
    back = [b.batch_target, x.c, x.h, x.w]
    if draw(st.booleans()):
        back[1] = -1
    return Feature(b.op("Reshape", [swapped, b.ints(back, "shape")]), x.c, x.h, x.w)


def fits_shuffle(b: GraphBuilder, x: Feature) -> bool:
    return len(divisors(x.c)) > 2


def reshape_roundtrip(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Reshape to (c, h*w), an activation or per-channel constant, and back (cancel/sink_reshapes cases)."""
    flat = b.op("Reshape", [x.name, b.ints([b.batch_target, x.c, -1], "shape")])
    kind = draw(st.sampled_from(["Relu", "Mul", "Add", "Sigmoid"]))
    inner = b.op(kind, [flat] + ([b.uniform((x.c, 1), 0.5, 1.5)] if kind in ("Mul", "Add") else []))
    return Feature(b.op("Reshape", [inner, b.ints([b.batch_target, x.c, x.h, x.w], "shape")]), x.c, x.h, x.w)


def channels_last(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """NCHW -> NHWC, then a per-channel constant, an activation or a MatMul (+ bias) over channels, -> NCHW."""
    nhwc = b.op("Transpose", [x.name], perm=[0, 2, 3, 1])
    kind = draw(st.sampled_from(["Mul", "Add", "Relu", "MatMul"]))
    c = x.c
    if kind == "MatMul":
        c = draw(st.integers(1, MAX_SIZE))
        inner = b.op("MatMul", [nhwc, b.normal((x.c, c), x.c**-0.5)])
        if draw(st.booleans()):
            inner = b.op("Add", [inner, b.normal(c, 0.1, "bias")])
    elif kind == "Relu":
        inner = b.op("Relu", [nhwc])
    else:
        inner = b.op(kind, [nhwc, b.uniform(c, 0.5, 1.5)])
    return Feature(b.op("Transpose", [inner], perm=[0, 3, 1, 2]), c, x.h, x.w)


def swap_hw(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Transpose of the two spatial axes."""
    return Feature(b.op("Transpose", [x.name], perm=[0, 1, 3, 2]), x.c, x.w, x.h)
