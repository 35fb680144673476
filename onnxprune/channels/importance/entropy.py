"""Relative-entropy kernel importance (APBM, Qu et al. 2022).

For each filter bank of the group (a producer's weight, role "out"; fallbacks as in
:mod:`.magnitude`), over *all* n filters w_1..w_n of that layer:

    cos_ij = <w_i, w_j> / (||w_i|| ||w_j||)            (0 for an all-zero filter)
    p_i    = softmax_j(cos_ij / τ),  j = 1..n            (the similarity distribution of kernel i;
                                                        it includes j = i, where cos_ii = 1)
    q      = (1/n) Σ_i p_i                               (the layer's reference distribution)
    I_i    = KL(p_i || q) = Σ_j p_ij log(p_ij / q_j)

and the channel's score is I summed over the group's filter banks (and over the positions a
channel holds, e.g. a grouped conv's copies).

Why this ranks redundancy low: a kernel unlike the others puts its mass on itself, a pattern the
mixture q holds only with weight 1/n, so its KL is about log n. A kernel with k near-copies shares
that mass with them; q already holds the pattern k times, so its KL drops to about log(n/k). An
all-zero (dead) filter has a uniform p_i, close to q: KL ≈ 0. The mean of I_i over the layer is the
mutual information between "which kernel" and "which kernel it resembles"; I_i is kernel i's
share. τ (default 0.1) sets how similar two kernels must be to count as copies: with τ ≥ 0.5 the
near-uniform bulk of p_i dominates and duplicates are no longer ranked low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGroup
from onnxprune.channels.importance.magnitude import channel_weights, per_channel


def kernel_kl(rows: np.ndarray, temperature: float) -> np.ndarray:
    """KL(p_i || q) for every row (kernel) of ``rows``, with the distributions of the module doc.

    Uses ``sum_j p_ij log p_ij = sum_j p_ij l_ij - log z_i`` (l: the shifted logits, z_i their row
    sum of exponentials), so the n x n matrices are traversed a few times, in float32.
    """
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    logits = unit @ unit.T
    logits *= np.float32(1.0 / temperature)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    z = p.sum(axis=1, dtype=np.float64)
    p /= z[:, None].astype(np.float32)
    log_q = np.log(np.maximum(p.mean(axis=0, dtype=np.float64), np.finfo(np.float64).tiny))
    cross = (p @ log_q.astype(np.float32)).astype(np.float64)
    return np.einsum("ij,ij->i", p, logits, dtype=np.float64) - np.log(z) - cross


@dataclass(frozen=True)
class Entropy:
    """KL divergence of each kernel's similarity distribution from its layer's mean distribution."""

    temperature: float = 0.1
    needs_data = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        _, slices = channel_weights(group, graph)
        return per_channel(group, slices, lambda s: kernel_kl(s.full, self.temperature)[s.where])
