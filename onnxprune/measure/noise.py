"""The noise-aware equivalence rule: accept float32 rounding, reject a wrong rewrite, no user tolerance.

An exact rewrite (BN folding, branch or layer merging) changes outputs only by float32 rounding,
and that rounding grows with depth and width, so no fixed tolerance fits both a LeNet and a
ResNet-50. The reference itself says how large it is: onnxruntime with graph optimizations on folds
BN into Conv, fuses activations and reorders convolution sums (NCHWc), so
``max |ref(optimized) - ref(unoptimized)|`` per output, the *noise floor*, is the rounding that
this kind of rewrite makes, measured on the same feeds.

Rule: an output passes when every element is within ``max(k * floor, r * max|ref|)`` of the
optimized reference run, with k = ``NOISE_MULTIPLE`` and r = ``SCALE_FLOOR``. The floor follows
the model's own float32 noise; r keeps a sane bound where the two runs are bit-identical.

Why k = 3 and r = 1e-5 (onnxruntime 1.32 CPU, random N(0, 1) feeds, ``pipeline.optimize``):

- correct rewrites: deviation / floor is 0.52-0.88 on ResNet-50 and ResNeXt-50 (64-224 px, three
  seeds) and Inception-v3 (299 px), whose floors are 1.3e-5 to 4.2e-5 of the output's peak; at
  most 1.14 on the trained CIFAR ResNet-20/56 and 2 on the 17 zoo families, whose floors are a
  few float32 ulps, so r bounds them (margins 31-149). Smallest margin: 3.4 (Inception-v3).
- broken rewrites on a 64 px ResNet-50 (each bottleneck's 3x3 conv, 16 channels each): one
  channel's bias dropped is at least 5 floors off, a BN scaled on the input axis or two output
  channels swapped at least 900; one channel scaled by 1.01 at least 6.6 up to conv 36 of 53, but
  for some channels of the last bottlenecks only 0.7-3.7: there that error moves the logits no
  more than rounding does.
  k = 2 would reach conv 39 but leave correct rewrites a margin of 2.3.
- r is the previous default, so this rule accepts all it accepted; onnxsim's 1e-4 would pass a
  1.01 one-channel scale in 12 of ResNet-56's 55 convs instead of 3 (which are below 3 floors).

Not used: a float64 reference, since onnxruntime's CPU provider has no double Conv or
GlobalAveragePool kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: A correct rewrite deviates at most this many noise floors from the reference.
NOISE_MULTIPLE = 3.0

#: Lower bound on the tolerance, relative to the output's largest magnitude.
SCALE_FLOOR = 1e-5


def floor(optimized: Sequence[np.ndarray], unoptimized: Sequence[np.ndarray]) -> float:
    """Largest |a - b| over elements finite in both runs: a NaN or inf says nothing about rounding."""
    worst = 0.0
    for a, b in zip(optimized, unoptimized):
        if a.dtype.kind not in "biuf" or a.shape != b.shape:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64) & np.isfinite(b64)
        if finite.any():
            worst = max(worst, float(np.abs(a64[finite] - b64[finite]).max()))
    return worst


def bound(noise_floor: float, peak: float) -> float:
    """The largest deviation a correct rewrite may show: ``max(k * floor, r * peak)``."""
    return max(NOISE_MULTIPLE * noise_floor, SCALE_FLOOR * peak)
