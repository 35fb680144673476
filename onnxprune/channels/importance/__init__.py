"""Channel importance criteria: ``criterion(group, graph)`` gives one score per channel of the group.

Higher is more important. A criterion reads the group's parameters through their roles (the
filters of its producers, its BN scales, its consumers' columns), never by branching on op types,
and aggregates them over the whole group (every producer of a residual group, every position a
channel holds). NaN scores mean "cannot score this channel": policies never remove it.

Variants are constructor arguments (``Magnitude(p=2)``, ``Entropy(temperature=0.2)``); the
registry maps the CLI's names to factories. Criteria that need data (``needs_data``: the CLI then
requires ``--data``) compute per-filter scores elsewhere, e.g. ``onnxprune.retrain.gradients``
gives ``{weight initializer name: score per output channel}``; :func:`from_filter_scores` turns
such a mapping into a criterion, and :func:`register` adds its factory under a name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.importance.activation import Activation
from onnxprune.channels.importance.bn_scale import BNScale
from onnxprune.channels.importance.entropy import Entropy
from onnxprune.channels.importance.fpgm import FPGM
from onnxprune.channels.importance.gradient import Gradient
from onnxprune.channels.importance.magnitude import Magnitude
from onnxprune.channels.importance.random import Random
from onnxprune.channels.relations import ROLE_OUT
from onnxprune.core.errors import InputError

log = logging.getLogger(__name__)


@runtime_checkable
class Criterion(Protocol):
    """Scores the channels of one group; ``needs_data``: it must be given data to be built."""

    needs_data: bool

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray: ...


CRITERIA: dict[str, Callable[..., Criterion]] = {
    "l1": functools.partial(Magnitude, p=1.0),
    "l2": functools.partial(Magnitude, p=2.0),
    "bn": BNScale,
    "entropy": Entropy,
    "fpgm": FPGM,
    "random": Random,
    "taylor": functools.partial(Gradient, mode="taylor"),
    "gradient": functools.partial(Gradient, mode="gradient"),
    "activation": functools.partial(Activation, statistic="activation"),
    "apoz": functools.partial(Activation, statistic="apoz"),
    "hrank": functools.partial(Activation, statistic="hrank"),
}


def register(name: str, factory: Callable[..., Criterion], needs_data: bool = False) -> None:
    """Add (or replace) a criterion factory; ``needs_data`` tells the CLI it requires ``--data``."""
    if needs_data:
        factory = functools.partial(factory)
        factory.needs_data = True  # type: ignore[attr-defined]
    CRITERIA[name] = factory


def needs_data(name: str) -> bool:
    """Whether the criterion registered as ``name`` must be given data (``--data``)."""
    factory = _factory(name)
    return bool(getattr(factory, "needs_data", False) or getattr(getattr(factory, "func", None), "needs_data", False))


def make(name: str, **options) -> Criterion:
    """Build the criterion registered as ``name``; an unknown name or a bad option is an InputError."""
    factory = _factory(name)
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise InputError(f"criterion {name}: {exc}") from exc


def score_groups(channel_graph: ChannelGraph, criterion: Criterion) -> dict[int, np.ndarray]:
    """Scores of every prunable group, by group id, as float64 arrays of the group's size."""
    scores = {}
    for group in channel_graph.prunable:
        values = np.asarray(criterion(group, channel_graph.graph), dtype=np.float64)
        if values.shape != (group.size,):
            raise ValueError(f"{criterion!r} gave {values.shape} scores for group {group.id} of {group.size} channels")
        scores[group.id] = values
    return scores


@dataclass(frozen=True, eq=False)
class FilterScores:
    """Scores given per producer weight and output channel, mapped onto groups.

    Channel c's score is the sum, over the group's role-"out" axes whose tensor name is a key of
    ``scores`` (and whose length matches the axis), of ``scores[name][position]`` for every
    position c holds there. A group with no such axis is unscorable (NaN): it is left whole.
    """

    scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    needs_data = False

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        total = np.zeros(group.size)
        found = False
        tensors = graph.tensors()
        for name, axis in group.dims_with_role(ROLE_OUT):
            values = self.scores.get(name)
            tensor = tensors.get(name)
            if values is None or tensor is None or tensor.shape is None:
                continue
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            if len(values) != tensor.shape[axis]:
                log.warning("scores of '%s' have %d entries, its axis %d has %d", name, len(values), axis,
                            tensor.shape[axis])
                continue
            where, owner = group.members[(name, axis)]
            np.add.at(total, owner, values[where])
            found = True
        return total if found else np.full(group.size, np.nan)


def from_filter_scores(scores: Mapping[str, np.ndarray]) -> Criterion:
    """A criterion from ``{weight initializer name: score per output channel}`` (e.g. gradients)."""
    return FilterScores(dict(scores))


def _factory(name: str) -> Callable[..., Criterion]:
    if name not in CRITERIA:
        raise InputError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


__all__ = [
    "CRITERIA", "Activation", "BNScale", "Criterion", "Entropy", "FPGM", "FilterScores", "Gradient", "Magnitude",
    "Random", "from_filter_scores", "make", "needs_data", "register", "score_groups",
]
