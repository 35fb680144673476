"""Filter pruning via geometric median (FPGM, He et al., CVPR 2019).

PFEC-style norms assume that small filters matter little; FPGM instead removes the filters that
the rest of the layer can stand in for. For each filter bank of the group (a producer's weight,
role "out"; fallbacks as in :mod:`.magnitude`), over *all* n filters w_1..w_n of that layer:

    I_i = Σ_j ||w_i − w_j||_p                          (p = 2 by default, as in the paper; p = 1: L1)

The geometric median of the layer is the point minimising Σ_j ||x − w_j||; the filters with the
smallest I_i lie nearest to it, so what they contribute is closest to what the others already
express, and they are pruned first. The paper restricts the minimiser to the filters themselves,
which is exactly ranking by I_i. A filter with k copies acts as one point of weight k: every other
filter's sum counts its distance k times, so the median moves towards it and the copies rank low
(with half the layer's weight or more, they are a geometric median and rank lowest).

A channel's score is I summed over the group's filter banks (every producer of a residual
group) and over the positions the channel holds there (a grouped conv's copies), as
:class:`~.magnitude.Magnitude` sums norms. The distances of one bank are an n x n matrix
(``scipy.spatial.distance.cdist``), without the n x n x elements intermediate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy.spatial.distance import cdist

from onnxprune.channels.analysis import ChannelGroup
from onnxprune.channels.importance.magnitude import channel_weights, per_channel


def distance_sums(rows: np.ndarray, p: float = 2.0) -> np.ndarray:
    """``Σ_j ||rows[i] − rows[j]||_p`` for every row i (the module doc's I_i), in float64."""
    rows = np.asarray(rows, dtype=np.float64)
    return cdist(rows, rows, metric="minkowski", p=p).sum(axis=1)


@dataclass(frozen=True)
class FPGM:
    """Summed L``p`` distance of each filter to the other filters of its layer, over the group's producers."""

    p: float = 2.0
    needs_data = False

    def __post_init__(self) -> None:
        if not self.p >= 1:
            raise ValueError(f"p must be at least 1 (a norm), not {self.p}")

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        _, slices = channel_weights(group, graph)
        return per_channel(group, slices, lambda s: distance_sums(s.full, self.p)[s.where])
