"""Classifier heads: a feature map to a vector (pooling, Flatten, Reshape), then Gemm/MatMul layers."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.fuzz.builder import Draw, Feature, GraphBuilder, Vector

MAX_FEATURES = 1024  # larger maps are pooled first, so a Gemm stays small


def flatten(draw: Draw, b: GraphBuilder, x: Feature) -> Vector:
    """[N, c, h, w] -> [N, c*h*w] by Flatten or Reshape (0, -1 or the size), after a global pool sometimes."""
    if x.c * x.h * x.w > MAX_FEATURES or draw(st.booleans()):
        x = Feature(b.op(draw(st.sampled_from(["GlobalAveragePool", "GlobalMaxPool"])), [x.name]), x.c, 1, 1)
    features = x.c * x.h * x.w
    kind = draw(st.sampled_from(["Flatten", "Reshape", "computed"]))
    if kind == "Flatten":
        return Vector(b.op("Flatten", [x.name], axis=1), features)
    if kind == "computed":
        return Vector(b.op("Reshape", [x.name, _batch_by_minus_one(draw, b, x)]), features)
    target = draw(st.sampled_from([[b.batch_target, -1], [b.batch_target, features], [-1, features]]))
    return Vector(b.op("Reshape", [x.name, b.ints(target, "shape")]), features)


def _batch_by_minus_one(draw: Draw, b: GraphBuilder, x: Feature) -> str:
    """The target of ``x.view(x.size(0), -1)`` as exporters compute it: Shape, Gather, Unsqueeze, Concat."""
    if b.opset >= 15 and draw(st.booleans()):
        batch = b.op("Shape", [x.name], start=0, end=1)
    else:
        size = b.op("Gather", [b.op("Shape", [x.name]), b.ints(0, "index")], axis=0)
        axes = {"axes": [0]} if b.opset < 13 else {}
        batch = b.op("Unsqueeze", [size] + ([] if axes else [b.ints([0], "axes")]), **axes)
    return b.op("Concat", [batch, b.ints([-1], "rest")], axis=0)


def linear(draw: Draw, b: GraphBuilder, v: Vector) -> Vector:
    """Gemm (transB, optional or row bias, alpha/beta) or MatMul with an optional bias Add."""
    out = draw(st.integers(1, 10))
    scale = v.features**-0.5
    if draw(st.booleans()):
        trans = draw(st.booleans())
        inputs = [v.name, b.normal((out, v.features) if trans else (v.features, out), scale)]
        bias = draw(st.sampled_from([(out,), None, (1, out)]))
        if bias is not None:
            inputs.append(b.normal(bias, 0.1, "bias"))
        attrs: dict[str, Any] = {"transB": 1} if trans else {}
        if draw(st.booleans()):
            attrs |= {"alpha": draw(st.sampled_from([0.5, 2.0])), "beta": draw(st.sampled_from([1.0, 0.5]))}
        return Vector(b.op("Gemm", inputs, **attrs), out)
    product = b.op("MatMul", [v.name, b.normal((v.features, out), scale)])
    if draw(st.booleans()):
        bias = b.normal(out, 0.1, "bias")
        product = b.op("Add", [bias, product] if draw(st.booleans()) else [product, bias])
    return Vector(product, out)


def _between(draw: Draw, b: GraphBuilder, v: Vector) -> Vector:
    """What sits between two linear layers: nothing (a merge_linear case), an activation, or a BN."""
    kind = draw(st.sampled_from(["none", "Relu", "Sigmoid", "BatchNormalization"]))
    if kind == "none":
        return v
    if kind == "BatchNormalization":
        f = v.features
        params = [b.uniform(f, 0.5, 1.5, "gamma"), b.normal(f, 0.1, "beta"), b.normal(f, 0.1, "mean"),
                  b.uniform(f, 0.5, 1.5, "var")]
        return Vector(b.op(kind, [v.name, *params]), f)
    return Vector(b.op(kind, [v.name]), v.features)


def head(draw: Draw, b: GraphBuilder, x: Feature) -> Vector:
    """Flatten, then one or two linear layers."""
    v = linear(draw, b, flatten(draw, b, x))
    if draw(st.booleans()):
        v = linear(draw, b, _between(draw, b, v))
    return v
