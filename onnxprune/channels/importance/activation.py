"""Activation criteria: channel scores from calibration activations (mean |a|, 1 − APoZ, HRank).

Which activation: the tensors the group's consumers read, i.e. the data inputs of the nodes that
hold an input-channel weight axis of the group (role "in": the next conv's ``W[:, c]``, a Gemm's
columns behind a Flatten). That is the signal the next layer actually sees, after the BN, ReLU,
residual Add or pooling in between, so a channel that ReLU always zeroes scores as dead even if
its filter is large, and a residual stream is judged by what each block reads from it. A group
read by several consumers (a residual stream feeds every block of its stage) sums their scores,
as :class:`~.magnitude.Magnitude` sums over producers; a tensor read twice counts once. Within one
tensor a channel's score is the mean over the positions it holds (one per channel for NCHW; HW
positions behind a Flatten), so a flattened tensor measures the same thing as the 4-D one.

With x the tensor moved to (N, P, ...) (P: positions of the group's axis), over the calibration
images n and the remaining axes s:

* ``activation`` (Molchanov et al., ICLR 2017, "Pruning convolutional neural networks for
  resource efficient inference", the activation criterion): ``mean_{n,s} |x[n, p, s]|``;
* ``apoz`` (Hu et al. 2016, "Network Trimming"): ``1 − APoZ_p``, APoZ_p = ``mean_{n,s} [x[n, p, s] = 0]``,
  the fraction of exact zeros (post-ReLU); a channel that is always zero scores 0;
* ``hrank`` (Lin et al., CVPR 2020, "HRank: Filter Pruning using High-Rank Feature Map"):
  ``mean_n rank(M_{n,p})``, M the channel's map as a matrix over the last two remaining axes (H×W;
  1×L for a sequence, 1×1 for a feature), rank = #{σ_k > rtol · σ_max} from the singular values
  (``rtol`` defaults to max(H, W) · eps(float32), ``numpy.linalg.matrix_rank``'s tolerance, as the
  paper's ``torch.matrix_rank``). Low-rank maps carry little information; a zero map has rank 0.
  The SVDs cost more than the forward pass, so at most ``rank_samples`` images are used: the paper
  observes that a filter's average rank hardly depends on how many images are seen, and on
  ResNet-20 128 images rank every group's channels like 256 do (Spearman ≥ 0.97).

A group with no consumer weight is unscorable (NaN), as is a channel no consumer reads.

All groups come from one calibration pass: the first call finds every prunable group of the graph
(:func:`~onnxprune.channels.analysis.analyse`, since a criterion is handed one group at a time),
runs the graph with onnxruntime over ``samples`` images of ``data`` and keeps, per tensor axis,
running sums per position only (memory: one value per channel, never the activations).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGroup, analyse
from onnxprune.channels.relations import ROLE_IN, Dim
from onnxprune.core.data import DataSource, resolve_input_shapes
from onnxprune.core.errors import OptionError
from onnxprune.measure.activations import collect

log = logging.getLogger(__name__)


def read_dims(group: ChannelGroup, graph: gs.Graph) -> list[Dim]:
    """The group's axes on the activations its consumers read (data inputs of nodes with a role-"in" weight axis)."""
    nodes = {node.name: node for node in graph.nodes}
    readers = {group.roles[dim][0] for dim in group.dims_with_role(ROLE_IN)}
    inputs = {t.name for name in readers for t in nodes[name].inputs if isinstance(t, gs.Variable)}
    return sorted(dim for dim in group.members if dim[0] in inputs)


def mean_magnitude(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Per position p of ``x`` (N, P, ...): Σ |x| over every other axis, and how many values were summed."""
    axes = (0, *range(2, x.ndim))
    return np.abs(x).sum(axis=axes, dtype=np.float64), x.size // x.shape[1]


def nonzero_fraction(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Per position: how many values are not exactly zero (1 − APoZ once divided by the count)."""
    axes = (0, *range(2, x.ndim))
    return np.count_nonzero(x, axis=axes).astype(np.float64), x.size // x.shape[1]


def map_ranks(x: np.ndarray, rtol: float | None = None) -> tuple[np.ndarray, int]:
    """Per position: Σ_n rank of the map x[n, p] seen as a matrix over its last two axes, and N."""
    rows = int(np.prod(x.shape[2:-1], dtype=np.int64)) if x.ndim > 3 else 1
    cols = x.shape[-1] if x.ndim > 2 else 1
    maps = x.reshape(x.shape[0], x.shape[1], rows, cols)
    singular = np.linalg.svd(maps, compute_uv=False)
    tol = max(rows, cols) * np.finfo(np.float32).eps if rtol is None else rtol
    ranks = (singular > tol * singular[..., :1]).sum(axis=-1)
    return ranks.sum(axis=0, dtype=np.float64), x.shape[0]


Reduction = Callable[[np.ndarray], tuple[np.ndarray, int]]

STATISTICS: dict[str, Reduction] = {"activation": mean_magnitude, "apoz": nonzero_fraction, "hrank": map_ranks}


@dataclass
class Accumulator:
    """Running per-position sums of one reduction over batches; ``visit`` for :func:`collect`.

    ``limit`` caps the images reduced (the first ones seen), for the costly HRank SVDs.
    """

    dims: Sequence[Dim]
    reduce: Reduction
    limit: int | None = None
    totals: dict[Dim, np.ndarray] = field(default_factory=dict)
    counts: dict[Dim, int] = field(default_factory=dict)
    seen: int = 0

    def __call__(self, values: Mapping[str, np.ndarray]) -> None:
        left = None if self.limit is None else self.limit - self.seen
        if left is not None and left <= 0:
            return
        batch = 0
        for dim in self.dims:
            x = np.moveaxis(np.asarray(values[dim[0]], dtype=np.float32), dim[1], 1)[:left]
            total, count = self.reduce(x)
            self.totals[dim] = self.totals[dim] + total if dim in self.totals else total
            self.counts[dim] = self.counts.get(dim, 0) + count
            batch = len(x)
        self.seen += batch

    def means(self) -> dict[Dim, np.ndarray]:
        return {dim: self.totals[dim] / self.counts[dim] for dim in self.totals if self.counts[dim]}


@dataclass(eq=False)
class Activation:
    """``statistic``: "activation" (mean |a|), "apoz" (1 − fraction of zeros) or "hrank" (mean map rank)."""

    statistic: str = "activation"
    data: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    samples: int = 256
    batch_size: int = 32
    rank_samples: int = 128
    rtol: float | None = None
    needs_data = True
    _means: dict[Dim, np.ndarray] = field(default_factory=dict, repr=False)
    _graph: gs.Graph | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {tuple(STATISTICS)}, not {self.statistic!r}")
        if not self.data:
            raise OptionError(f"criterion {self.statistic} needs calibration data: {{}} FILE.npz", "data")
        if min(self.samples, self.batch_size, self.rank_samples) < 1:
            raise ValueError("samples, batch_size and rank_samples must be positive")

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        if self._graph is not graph:
            self._means, self._graph = self._measure(graph), graph
        total, read = np.zeros(group.size), np.zeros(group.size, dtype=bool)
        for dim in read_dims(group, graph):
            where, owner = group.members[dim]
            count = np.bincount(owner, minlength=group.size)
            total += np.divide(np.bincount(owner, self._means[dim][where], minlength=group.size), count,
                               out=np.zeros(group.size), where=count > 0)
            read |= count > 0
        return np.where(read, total, np.nan)

    def _measure(self, graph: gs.Graph) -> dict[Dim, np.ndarray]:
        """Per-position means of the statistic on every activation any prunable group reads."""
        dims = sorted({dim for group in analyse(graph).prunable for dim in read_dims(group, graph)})
        model = gs.export_onnx(graph, do_type_check=False)
        if self.statistic == "hrank":
            accumulator = Accumulator(dims, functools.partial(map_ranks, rtol=self.rtol), self.rank_samples)
        else:
            accumulator = Accumulator(dims, STATISTICS[self.statistic])
        names = sorted({name for name, _ in dims})
        collect(model, names, self._feeds(model), accumulator, progress=f"{self.statistic} calibration")
        log.info("%s: %d calibration images over %d activations", self.statistic, accumulator.seen, len(names))
        return accumulator.means()

    def _feeds(self, model: onnx.ModelProto) -> Iterator[dict[str, np.ndarray]]:
        """Whole batches of ``data`` until ``samples`` images are reached (a static batch dim is kept)."""
        batch = min(self.batch_size, self.samples)
        shapes = {name: (batch, *shape[1:]) for name, shape in resolve_input_shapes(model).items()}
        taken = 0
        for feed in DataSource(str(self.data), self.mean, self.std).feeds(model, shapes):
            yield feed
            taken += len(next(iter(feed.values())))
            if taken >= self.samples:
                return
