"""One builder per single-path op family: each draws a valid geometry and attributes for its opset.

A builder takes hypothesis's ``draw``, the graph builder and the current feature map and returns
the new one. Choices are drawn so that shrinking moves towards the plainest form (stride 1, no
padding, the first op of a list), which keeps the minimal failing graphs readable.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.fuzz.builder import Draw, Feature, GraphBuilder
from tests.fuzz.geometry import MAX_SIZE, ceil_is_safe, divisors, window_out

# --- Conv -------------------------------------------------------------------------------------


def _conv_axis(draw: Draw, size: int, same: bool) -> tuple[int, int, int, tuple[int, int]]:
    """(kernel, stride, dilation, pads) along one axis; ``same`` keeps the size (odd kernel, stride 1)."""
    kernel = draw(st.sampled_from([1, 3] if same else [1, 3, 2]))
    dilation = draw(st.sampled_from([1, 2])) if kernel > 1 else 1
    if same:
        half = dilation * (kernel - 1) // 2
        return kernel, 1, dilation, (half, half)
    stride = draw(st.sampled_from([1, 2]))
    pads = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    if window_out(size, kernel, stride, dilation, pads) > MAX_SIZE:
        pads = (0, 0)
    reach = dilation * (kernel - 1) + 1
    if size + sum(pads) < reach:
        pads = (pads[0], reach - size - pads[0])
    return kernel, stride, dilation, pads


def conv(draw: Draw, b: GraphBuilder, x: Feature, out: int | None = None, same: bool = False) -> Feature:
    """Conv with groups, dilation, stride, asymmetric pads or auto_pad, and an optional bias."""
    group = draw(st.sampled_from([g for g in divisors(x.c) if out is None or out % g == 0]))
    if out is None:
        out = group * draw(st.integers(1, MAX_SIZE // group))
    axes = [_conv_axis(draw, size, same) for size in (x.h, x.w)]
    kernel, strides, dilations = ([axis[i] for axis in axes] for i in range(3))
    attrs: dict[str, Any] = {"kernel_shape": kernel, "group": group}
    auto_pad = "NOTSET" if same else draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and dilations == [1, 1]:  # onnxruntime: no dilated SAME
        attrs["auto_pad"] = auto_pad
        h, w = (-(-size // stride) for size, stride in zip((x.h, x.w), strides))
    elif auto_pad == "VALID" and all(window_out(s, k, 1, d, (0, 0)) for s, k, d in zip((x.h, x.w), kernel, dilations)):
        attrs["auto_pad"] = auto_pad
        h, w = (window_out(s, k, st_, d, (0, 0)) for s, k, st_, d in zip((x.h, x.w), kernel, strides, dilations))
    else:
        pads = [axes[0][3][0], axes[1][3][0], axes[0][3][1], axes[1][3][1]]
        attrs["pads"] = pads
        h = window_out(x.h, kernel[0], strides[0], dilations[0], (pads[0], pads[2]))
        w = window_out(x.w, kernel[1], strides[1], dilations[1], (pads[1], pads[3]))
    if strides != [1, 1] or draw(st.booleans()):
        attrs["strides"] = strides
    if dilations != [1, 1]:
        attrs["dilations"] = dilations
    fan_in = x.c // group * kernel[0] * kernel[1]
    inputs = [x.name, b.normal((out, x.c // group, *kernel), fan_in**-0.5)]
    if draw(st.booleans()):
        inputs.append(b.normal(out, 0.1, "bias"))
    return Feature(b.op("Conv", inputs, **attrs), out, h, w)


def conv_pair(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Two Convs with nothing or a BN between them: what merge_linear merges."""
    y = conv(draw, b, x)
    if draw(st.booleans()):
        y = batchnorm(draw, b, y)
    return conv(draw, b, y, same=draw(st.booleans()))


# --- normalisation, activations, per-channel constants ------------------------------------------


def batchnorm(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Inference BatchNormalization; ``training_mode=0`` spelled out sometimes where the opset has it."""
    c = x.c
    params = [b.uniform(c, 0.5, 1.5, "gamma"), b.normal(c, 0.1, "beta"), b.normal(c, 0.1, "mean"),
              b.uniform(c, 0.5, 1.5, "var")]
    attrs: dict[str, Any] = {"epsilon": draw(st.sampled_from([1e-5, 1e-3]))}
    if b.opset >= 14 and draw(st.booleans()):
        attrs["training_mode"] = 0
    return Feature(b.op("BatchNormalization", [x.name, *params], **attrs), x.c, x.h, x.w)


def activation(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Relu, PRelu (per-channel or shared slope), Clip (min/max inputs), Sigmoid, HardSwish (opset 14+)."""
    kind = draw(st.sampled_from(["Relu", "PRelu", "Clip", "Sigmoid"] + (["HardSwish"] if b.opset >= 14 else [])))
    inputs = [x.name]
    if kind == "PRelu":
        inputs.append(b.uniform(draw(st.sampled_from([(x.c, 1, 1), (1,), (1, 1, 1)])), -0.5, 0.5, "slope"))
    elif kind == "Clip":
        low, high = draw(st.sampled_from([(0.0, 6.0), (-1.0, None), (None, 1.0), (-0.5, 0.5), (None, None)]))
        inputs += [b.const(low, "min") if low is not None else "", b.const(high, "max") if high is not None else ""]
        while inputs[-1] == "":
            inputs.pop()
    return Feature(b.op(kind, inputs), x.c, x.h, x.w)


def affine(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Add/Sub/Mul/Div by a broadcast constant: per channel, scalar, full shape, or the identity value."""
    op = draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]))
    shape = draw(st.sampled_from([(x.c, 1, 1), (1, x.c, 1, 1), (1,), (), (1, 1, 1, 1), (x.c, x.h, x.w)]))
    identity = draw(st.booleans()) and draw(st.booleans())
    if identity:
        constant = b.const(b.rng.uniform(1, 1, shape) * (op in ("Mul", "Div")), "neutral")
    else:
        constant = b.const(b.rng.uniform(0.5, 1.5, shape) * b.rng.choice([-1, 1], shape), "k")
    swap = op != "Div" and draw(st.booleans())
    return Feature(b.op(op, [constant, x.name] if swap else [x.name, constant]), x.c, x.h, x.w)


# --- pooling, Pad, Resize ----------------------------------------------------------------------


def _pool_axis(draw: Draw, size: int, dilated: bool) -> tuple[int, int, int, tuple[int, int]]:
    kernel = draw(st.sampled_from([k for k in (2, 1, 3) if k <= size]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 2])) if dilated and kernel > 1 and 2 * (kernel - 1) < size else 1
    pads = (draw(st.integers(0, kernel - 1)), draw(st.integers(0, kernel - 1)))
    if window_out(size, kernel, stride, dilation, pads, ceil=True) > MAX_SIZE:
        pads = (0, 0)
    return kernel, stride, dilation, pads


def pool(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """MaxPool or AveragePool (pads below the kernel, dilations and ceil_mode where the opset has them), or global."""
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
    if op.startswith("Global"):
        return Feature(b.op(op, [x.name]), x.c, 1, 1)
    dilated = op == "MaxPool" or b.opset >= 19
    axes = [_pool_axis(draw, size, dilated) for size in (x.h, x.w)]
    kernel, strides, dilations = ([axis[i] for axis in axes] for i in range(3))
    pads = [axes[0][3][0], axes[1][3][0], axes[0][3][1], axes[1][3][1]]
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    if dilations != [1, 1]:
        attrs["dilations"] = dilations
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    geometry = [(s, k, st_, d, (p, q)) for s, k, st_, d, (p, q) in zip((x.h, x.w), kernel, strides, dilations,
                                                                         [(pads[0], pads[2]), (pads[1], pads[3])])]
    ceil = draw(st.booleans()) and all(ceil_is_safe(*g) for g in geometry)
    if ceil:
        attrs["ceil_mode"] = 1
    h, w = (window_out(*g, ceil=ceil) for g in geometry)
    return Feature(b.op(op, [x.name], **attrs), x.c, h, w)


def fits_pool(b: GraphBuilder, x: Feature) -> bool:
    return x.h >= 2 and x.w >= 2


def pad(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Constant Pad (zero or not) of the spatial axes, sometimes the channels, then sometimes a Conv to fuse it into."""
    room = [MAX_SIZE - x.c, MAX_SIZE - x.h, MAX_SIZE - x.w]
    amounts = [[draw(st.integers(0, min(2, r // 2))) for _ in range(2)] for r in room]
    if not (draw(st.booleans()) and draw(st.booleans())):
        amounts[0] = [0, 0]
    value = draw(st.sampled_from([0.0, 0.0, 0.5, -1.0]))
    axes = [1, 2, 3] if amounts[0] != [0, 0] else [2, 3]
    full = [0, *(a[0] for a in amounts), 0, *(a[1] for a in amounts)]
    inputs = [x.name]
    if b.opset >= 18 and draw(st.booleans()):
        inputs += [b.ints([a[0] for a in amounts[-len(axes):]] + [a[1] for a in amounts[-len(axes):]], "pads"),
                   b.const(value, "value"), b.ints(axes if draw(st.booleans()) else [a - 4 for a in axes], "axes")]
    else:
        inputs.append(b.ints(full, "pads"))
        if value or draw(st.booleans()):
            inputs.append(b.const(value, "value"))
    attrs = {"mode": "constant"} if draw(st.booleans()) else {}
    padded = Feature(b.op("Pad", inputs, **attrs), x.c + sum(amounts[0]), x.h + sum(amounts[1]),
                     x.w + sum(amounts[2]))
    return padded if draw(st.booleans()) and draw(st.booleans()) else conv(draw, b, padded)


def fits_pad(b: GraphBuilder, x: Feature) -> bool:
    return x.h <= MAX_SIZE - 2 and x.w <= MAX_SIZE - 2


def resize(draw: Draw, b: GraphBuilder, x: Feature) -> Feature:
    """Nearest Resize by integer scales, given as scales or as sizes, in each opset's input layout."""
    sh = draw(st.sampled_from([s for s in (2, 1, 3) if x.h * s <= MAX_SIZE]))
    sw = draw(st.sampled_from([s for s in (2, 1, 3) if x.w * s <= MAX_SIZE]))
    roi = b.const([], "roi") if b.opset < 13 or draw(st.booleans()) else ""
    axes = b.opset >= 18 and draw(st.booleans())
    sized = draw(st.booleans()) and (axes or not b.dynamic_batch)  # sizes of all axes fix the batch
    if sized:
        no_scales = b.const([], "scales") if b.opset < 13 else ""
        target = [x.h * sh, x.w * sw] if axes else [1, x.c, x.h * sh, x.w * sw]
        inputs = [x.name, roi, no_scales, b.ints(target, "sizes")]
    else:
        inputs = [x.name, roi, b.const([sh, sw] if axes else [1, 1, sh, sw], "scales")]
    attrs: dict[str, Any] = {"mode": "nearest"}
    if axes:
        attrs["axes"] = [2, 3]
    if draw(st.booleans()):
        attrs["coordinate_transformation_mode"] = draw(st.sampled_from(["asymmetric", "half_pixel"]))
        attrs["nearest_mode"] = draw(st.sampled_from(["floor", "round_prefer_floor"]))
    return Feature(b.op("Resize", inputs, **attrs), x.c, x.h * sh, x.w * sw)


def fits_resize(b: GraphBuilder, x: Feature) -> bool:
    return 2 * x.h <= MAX_SIZE or 2 * x.w <= MAX_SIZE
