"""Output sizes of windows and slices, as the ONNX specification computes them.

The builders only emit geometries these functions accept, and the checker's shape inference
then confirms every declared output shape, so a wrong formula here fails loudly, not silently.
"""

from __future__ import annotations

import math

MAX_SIZE = 16  # channels and spatial sizes stay at most this, so every case runs in milliseconds
INT_MAX = 2**63 - 1


def window_out(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int], ceil: bool = False) -> int:
    """Output length of a Conv or pooling window along one axis; 0 when the window does not fit."""
    span = size + sum(pads) - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def ceil_is_safe(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> bool:
    """Whether ceil_mode's extra window starts inside the input, where every opset and onnxruntime agree."""
    out = window_out(size, kernel, stride, dilation, pads, ceil=True)
    return (out - 1) * stride < size + pads[0]


def slice_len(size: int, start: int, end: int, step: int) -> int:
    """Length of ``Slice`` along one axis: negative indices count from the end, then clamp by step sign."""
    start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return max(0, math.ceil((end - start) / step))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
