"""Builders of multi-branch blocks: residual sums, gates, Concat and Split.

These are where channel groups couple (an Add ties its operands, a Concat offsets them, a Split
cuts them), so they are what the pruning analysis and the branch passes are fuzzed on.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz.builder import Draw, Feature, GraphBuilder
from tests.fuzz.geometry import MAX_SIZE
from tests.fuzz.layers import activation, batchnorm, conv


def _same_shape_branch(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """A branch keeping x's shape: identity, BN, Conv, Conv+BN, or a Conv-activation-Conv residual body."""
    kind = draw(st.sampled_from(["conv_bn", "identity", "bn", "conv", "body"]))
    if kind == "identity":
        return x
    if kind == "bn":
        return batchnorm(draw, b, x)
    y = conv(draw, b, x, out=x.c, same=True)
    if kind == "conv_bn":
        return batchnorm(draw, b, y)
    if kind == "body":
        return conv(draw, b, activation(draw, b, y), out=x.c, same=True)
    return y


def branches(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Parallel same-shape branches summed by a chain of Adds (either operand order) or one Sum."""
    outs = [_same_shape_branch(draw, b, x) for _ in range(draw(st.integers(2, 3)))]
    if draw(st.booleans()):
        return Feature(b.op("Sum", [o.name for o in outs]), x.c, x.h, x.w)
    total = outs[0].name
    for other in outs[1:]:
        total = b.op("Add", [other.name, total] if draw(st.booleans()) else [total, other.name])
    return Feature(total, x.c, x.h, x.w)


def gate(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """x times a gate: squeeze-excitation (broadcast over space), x * sigmoid(x), or x * Conv(x)."""
    kind = draw(st.sampled_from(["se", "silu", "product"]))
    if kind == "se":
        pooled = Feature(b.op("GlobalAveragePool", [x.name]), x.c, 1, 1)
        squeezed = activation(draw, b, conv(draw, b, pooled, out=draw(st.integers(1, x.c)), same=True))
        expanded = conv(draw, b, squeezed, out=x.c, same=True)
        weight = b.op(draw(st.sampled_from(["Sigmoid", "HardSigmoid"])), [expanded.name])
    elif kind == "silu":
        weight = b.op("Sigmoid", [x.name])
    else:
        weight = conv(draw, b, x, out=x.c, same=True).name
    return Feature(b.op("Mul", [weight, x.name] if draw(st.booleans()) else [x.name, weight]), x.c, x.h, x.w)


def _concat_part(draw: Draw, b: GraphBuilder, x: Feature, budget: int) -> Feature:
    kinds = (["identity", "activation"] if x.c <= budget else []) + ["conv"]
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return x
    if kind == "activation":
        return activation(draw, b, x)
    return conv(draw, b, x, out=draw(st.integers(1, budget)), same=True)


def concat(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Concat of 2-3 same-size branches of x (itself, an activation, Convs of any width) on the channel axis."""
    parts: list[Feature] = []
    count = draw(st.integers(2, 3))
    for index in range(count):
        budget = MAX_SIZE - sum(p.c for p in parts) - (count - index - 1)
        parts.append(_concat_part(draw, b, x, budget))
    axis = draw(st.sampled_from([1, -3]))
    return Feature(b.op("Concat", [p.name for p in parts], axis=axis), sum(p.c for p in parts), x.h, x.w)


def _split_node(draw: Draw, b: GraphBuilder, x: Feature, sizes: list[int]) -> list[str]:
    """Split's sizes where the opset wants them: attribute before 13, input from 13, num_outputs from 18."""
    axis = draw(st.sampled_from([1, -3]))
    equal = len(set(sizes)) == 1 and draw(st.booleans())
    if b.opset >= 18 and equal:
        return b.node("Split", [x.name], len(sizes), axis=axis, num_outputs=len(sizes))
    if equal:
        return b.node("Split", [x.name], len(sizes), axis=axis)
    if b.opset < 13:
        return b.node("Split", [x.name], len(sizes), axis=axis, split=sizes)
    return b.node("Split", [x.name, b.ints(sizes, "split")], len(sizes), axis=axis)


def split(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Split the channels in 2-3 parts, transform each, then Concat them (any order), keep one, or Add two."""
    count = draw(st.integers(2, min(3, x.c)))
    cuts = sorted(draw(st.lists(st.integers(1, x.c - 1), min_size=count - 1, max_size=count - 1, unique=True)))
    sizes = [end - start for start, end in zip([0, *cuts], [*cuts, x.c])]
    parts = [Feature(name, size, x.h, x.w) for name, size in zip(_split_node(draw, b, x, sizes), sizes)]
    how = draw(st.sampled_from(["concat", "one"] + (["add"] if sizes[0] == sizes[1] else [])))
    if how == "one":  # the other outputs stay unread, never transformed: no dead nodes
        return _transform(draw, b, draw(st.sampled_from(parts)))
    if how == "add":
        first, second = (_transform(draw, b, part) for part in parts[:2])
        return Feature(b.op("Add", [first.name, second.name]), sizes[0], x.h, x.w)
    parts = [_transform(draw, b, part) for part in parts]
    order = draw(st.permutations(parts))
    return Feature(b.op("Concat", [p.name for p in order], axis=1), x.c, x.h, x.w)


def _transform(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    kind = draw(st.sampled_from(["identity", "activation", "conv"]))
    if kind == "activation":
        return activation(draw, b, x)
    if kind == "conv":
        return conv(draw, b, x, out=x.c, same=True)
    return x


def fits_split(b: GraphBuilder, x: Feature) -> bool:
    return x.c >= 2
