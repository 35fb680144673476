"""Policies: which channels of each group to remove, given one score per channel (higher = keep).

Modes (``PolicyConfig``), exactly one of:

- ``ratio`` per group: remove ``floor(ratio * n)`` of each group's n scorable prunable channels,
  the lowest-scored first.
- ``ratio`` with ``global_ranking``: scores are divided by their group's mean |score| (so a
  group's typical channel scores 1 whatever the criterion's units or the layer's scale) and the
  globally lowest go until ``floor(ratio * N)`` of all N scorable prunable channels are removed.
- ``flops_target`` / ``params_target`` F: remove the lowest channels until the model keeps at most
  F of its MACs (FLOPs) / parameters, counted by :class:`CostModel`. With ``global_ranking`` the
  globally lowest normalised scores go first; without it, the smallest uniform per-group ratio
  that meets the target is used.
- ``threshold="adaptive"`` (joint layer/channel pruning (CN patent, Nanjing Univ. 2021)): per group,
  a histogram of its γ (mean |γ| over the group's normalisation scales) with ``bin_width`` (0.01)
  wide bins aligned at multiples of the width, scanned left to right; the first bin that is a local
  minimum (fewer than the bin before, at most the bin after; the ends count as +inf) gives δ, its
  lower edge; channels with γ < δ are removed. Groups without a scale are left whole. Scores only
  break ties when the floor limits removal.

Rules every mode obeys: only prunable channels with a finite score go; a group keeps at least
``max(min_channels, 1)`` channels, and every tensor axis of it keeps at least one position (a
Concat input, one half of a Split); ``round_to`` N rounds each group's kept count up to a multiple
of N (or to the whole group when that multiple would exceed it); groups with a member whose name
(a tensor, a node holding a parameter, a node reading or writing a member) matches an
``exclude`` regex (``re.search``) are left whole. Impossible requests raise InputError.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.costs import CostModel
from onnxprune.channels.importance.bn_scale import BNScale
from onnxprune.core.errors import OptionError
from onnxprune.measure.stats import ModelStats

log = logging.getLogger(__name__)

ADAPTIVE = "adaptive"
THRESHOLDS = (ADAPTIVE,)
EPSILON = 1e-9  # ratio * n within this of an integer counts as that integer


@dataclass
class PolicyConfig:
    ratio: float = 0.0
    global_ranking: bool = False
    flops_target: float | None = None
    params_target: float | None = None
    threshold: str | None = None
    min_channels: int = 1
    round_to: int = 1
    exclude: Sequence[str] = ()
    bin_width: float = 0.01

    @property
    def targets(self) -> bool:
        return self.flops_target is not None or self.params_target is not None


def select(
    channel_graph: ChannelGraph,
    scores: Mapping[int, np.ndarray],
    config: PolicyConfig,
    cost_model: CostModel | ModelStats | None = None,
) -> dict[int, np.ndarray]:
    """Group id -> sorted channel indices to remove, for every group losing at least one channel.

    ``scores`` holds one array per group (groups without one are left whole). ``cost_model`` is
    needed for a FLOPs/params target: a CostModel, or the ModelStats of this graph to build one
    (without it, stats are counted with the graph's declared input shapes, batch 1).
    """
    validate(config)
    patterns = [re.compile(pattern) for pattern in config.exclude]
    groups = [g for g in channel_graph.prunable if g.id in scores and not _excluded(channel_graph, g, patterns)]
    if config.threshold == ADAPTIVE:
        counts, plans = _threshold_counts(channel_graph, groups, scores, config)
    else:
        plans = {g.id: _plan(g, scores[g.id], config) for g in groups}
        counts = _counts(channel_graph, plans, config, cost_model)
    return {gid: np.sort(plans[gid].order[:k]) for gid, k in counts.items() if k > 0}


def validate(config: PolicyConfig) -> None:
    """Raise InputError for a request no graph could satisfy (a bad ratio, target or option mix)."""
    if not 0 <= config.ratio < 1:
        raise OptionError(f"{{}} {config.ratio:g} is outside [0, 1)", "ratio")
    for option, target in (("flops_target", config.flops_target), ("params_target", config.params_target)):
        if target is not None and not 0 < target <= 1:
            raise OptionError(f"{{}} {target:g} must be in (0, 1]: the fraction of the model to keep", option)
    if config.threshold is not None and config.threshold not in THRESHOLDS:
        raise OptionError(f"{{}} {config.threshold!r} is unknown; known: {', '.join(THRESHOLDS)}", "threshold")
    if config.threshold is not None and (config.ratio or config.targets or config.global_ranking):
        raise OptionError("{} adaptive chooses the channels of each group itself: drop {}, {}, {} and {}",
                          "threshold", "ratio", "global_ranking", "flops_target", "params_target")
    if config.ratio and config.targets:
        raise OptionError("{} and {}/{} are exclusive: give one", "ratio", "flops_target", "params_target")
    if config.min_channels < 0:
        raise OptionError(f"{{}} {config.min_channels} must be at least 0", "min_channels")
    if config.round_to < 1:
        raise OptionError(f"{{}} {config.round_to} must be at least 1", "round_to")
    if not config.bin_width > 0:
        raise OptionError(f"{{}} {config.bin_width:g} must be positive", "bin_width")
    for pattern in config.exclude:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(f"{{}} {pattern!r} is not a valid regular expression: {exc}", "exclude") from exc


# --- per-group plans ----------------------------------------------------------------------------


@dataclass
class _Plan:
    """A group's removable channels, least important first; every prefix is a legal removal."""

    group: ChannelGroup
    order: np.ndarray
    scorable: int  # prunable channels with a finite score: the base of a ratio
    limit: int  # most channels the floors let go
    round_to: int
    normalised: np.ndarray  # scores of ``order`` divided by the group's mean |score|

    def effective(self, wanted: int) -> int:
        """Channels removed when ``wanted`` are asked for: capped by the floors, kept count rounded up."""
        count = min(int(wanted), self.limit)
        if self.round_to > 1 and count > 0:
            size = self.group.size
            kept = min(-(-(size - count) // self.round_to) * self.round_to, size)
            count = size - kept
        return count


def _plan(group: ChannelGroup, score: np.ndarray, config: PolicyConfig, allowed: np.ndarray | None = None) -> _Plan:
    score = np.asarray(score, dtype=np.float64)
    candidate = group.prunable & np.isfinite(score)
    scale = float(np.abs(score[candidate]).mean()) if candidate.any() else 0.0
    if allowed is not None:
        candidate &= allowed
    ranked = np.nonzero(candidate)[0]
    ranked = ranked[np.argsort(score[ranked], kind="stable")]
    order = _keep_every_axis(group, ranked)
    limit = max(0, min(len(order), group.size - max(config.min_channels, 1)))
    normalised = score[order] / scale if scale > 0 else score[order]
    return _Plan(group, order, int(candidate.sum()) if allowed is None else len(order), limit, config.round_to,
                 normalised)


def _keep_every_axis(group: ChannelGroup, ranked: np.ndarray) -> np.ndarray:
    """Drop from ``ranked`` the channels that would be the last of some axis holding only part of the group."""
    left: list[int] = []  # channels still held, per axis that holds only some of the group's channels
    members: list[np.ndarray] = []
    for _, owner in group.members.values():
        channels = np.unique(owner)
        if len(channels) < group.size:
            member = np.zeros(group.size, dtype=bool)
            member[channels] = True
            left.append(len(channels))
            members.append(member)
    if not members:
        return ranked
    order = []
    for channel in ranked:
        axes = [index for index, member in enumerate(members) if member[channel]]
        if all(left[index] > 1 for index in axes):
            for index in axes:
                left[index] -= 1
            order.append(channel)
    return np.asarray(order, dtype=np.int64)


def _excluded(channel_graph: ChannelGraph, group: ChannelGroup, patterns: list[re.Pattern]) -> bool:
    if not patterns:
        return False
    names = {name for name, _ in group.members} | {node for node, _, _ in group.roles.values()}
    tensors = channel_graph.graph.tensors()
    for name in list(names):
        tensor = tensors.get(name)
        if tensor is not None:
            names.update(node.name for node in [*tensor.inputs, *tensor.outputs])
    hit = next((p.pattern for p in patterns for name in names if p.search(name)), None)
    if hit is not None:
        log.info("group %d excluded by the exclude pattern %r", group.id, hit)
    return hit is not None


# --- modes ----------------------------------------------------------------------------------------


def _counts(channel_graph: ChannelGraph, plans: dict[int, _Plan], config: PolicyConfig,
            cost_model: CostModel | ModelStats | None) -> dict[int, int]:
    if config.targets:
        costs = cost_model if isinstance(cost_model, CostModel) else CostModel.build(channel_graph, cost_model)
        return _target_counts(plans, config, costs)
    if config.global_ranking:
        wanted = math.floor(config.ratio * sum(p.scorable for p in plans.values()) + EPSILON)
        ranking = _GlobalRanking(plans)
        return ranking.counts(ranking.smallest(functools.partial(_removes_at_least, wanted)))
    return _uniform(plans, config.ratio)


def _uniform(plans: dict[int, _Plan], ratio: float) -> dict[int, int]:
    return {gid: plan.effective(math.floor(ratio * plan.scorable + EPSILON)) for gid, plan in plans.items()}


def _removes_at_least(wanted: int, counts: dict[int, int]) -> bool:
    return sum(counts.values()) >= wanted


class _GlobalRanking:
    """Channels of all groups sorted by normalised score; prefix m -> removed count per group."""

    def __init__(self, plans: dict[int, _Plan]) -> None:
        self.plans = plans
        self.ids = list(plans)
        owners = [np.full(p.limit, i) for i, p in enumerate(plans.values())]
        values = [p.normalised[: p.limit] for p in plans.values()]
        owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
        order = np.argsort(np.concatenate(values) if values else np.zeros(0), kind="stable")
        self.owner = owner[order].astype(np.int64)

    def counts(self, prefix: int) -> dict[int, int]:
        taken = np.bincount(self.owner[:prefix], minlength=len(self.ids))
        return {gid: self.plans[gid].effective(taken[i]) for i, gid in enumerate(self.ids)}

    def smallest(self, enough: Callable[[dict[int, int]], bool]) -> int:
        """The shortest prefix whose counts satisfy ``enough`` (monotone), or the whole list."""
        low, high = 0, len(self.owner)
        if not enough(self.counts(high)):
            return high
        while low < high:
            middle = (low + high) // 2
            if enough(self.counts(middle)):
                high = middle
            else:
                low = middle + 1
        return low


class _Target:
    """Whether per-group removal counts (prefixes of the plans' orders) meet the FLOPs/params targets."""

    def __init__(self, plans: dict[int, _Plan], config: PolicyConfig, costs: CostModel) -> None:
        self.config, self.costs = config, costs
        self.cumulative = {gid: costs.cumulative(plan.group, plan.order) for gid, plan in plans.items()}

    def left(self, counts: dict[int, int]) -> tuple[float, float]:
        removed = np.zeros(len(self.costs.sizes))
        for gid, count in counts.items():
            for index, cumulative in self.cumulative[gid]:
                removed[index] += cumulative[count]
        return self.costs.left(removed)

    def __call__(self, counts: dict[int, int]) -> bool:
        macs, params = self.left(counts)
        flops_target, params_target = self.config.flops_target, self.config.params_target
        return (flops_target is None or macs <= flops_target * self.costs.macs + EPSILON) and (
            params_target is None or params <= params_target * self.costs.params + EPSILON)


def _target_counts(plans: dict[int, _Plan], config: PolicyConfig, costs: CostModel) -> dict[int, int]:
    """The fewest removals (globally ranked, or the smallest uniform ratio) that meet the targets."""
    met = _Target(plans, config, costs)
    _check_reachable(config, costs, met.left({gid: plan.effective(plan.limit) for gid, plan in plans.items()}))
    if config.global_ranking:
        ranking = _GlobalRanking(plans)
        return ranking.counts(ranking.smallest(met))
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the ratio: counts only grow with it
        middle = (low + high) / 2
        low, high = (low, middle) if met(_uniform(plans, middle)) else (middle, high)
    return _uniform(plans, high)


def _check_reachable(config: PolicyConfig, costs: CostModel, floor: tuple[float, float]) -> None:
    for option, target, left, total, what in (
        ("flops_target", config.flops_target, floor[0], costs.macs, "FLOPs"),
        ("params_target", config.params_target, floor[1], costs.params, "parameters"),
    ):
        if target is None:
            continue
        if total <= 0:
            raise OptionError(f"{{}} needs the model's {what}, which could not be counted (input shapes unknown?)",
                              option)
        if left > target * total + EPSILON:
            raise OptionError(f"{{}} {target:g} is unreachable: with {{}} {config.min_channels} "
                              f"the floor is {left / total:.2f} of the {what}", option, "min_channels")


def _threshold_counts(channel_graph: ChannelGraph, groups: list[ChannelGroup], scores: Mapping[int, np.ndarray],
                      config: PolicyConfig) -> tuple[dict[int, int], dict[int, _Plan]]:
    gamma_of = BNScale(fallback=None)
    plans, counts = {}, {}
    for group in groups:
        gamma = gamma_of(group, channel_graph.graph)
        usable = group.prunable & np.isfinite(gamma)
        if not usable.any():
            log.info("group %d has no normalisation scale: left whole by the adaptive threshold", group.id)
            continue
        delta = adaptive_threshold(gamma[usable], config.bin_width)
        plan = _plan(group, scores[group.id], config, allowed=gamma < delta - EPSILON)
        plans[group.id], counts[group.id] = plan, plan.effective(len(plan.order))
        log.debug("group %d: δ = %.4f, %d of %d channels below", group.id, delta, len(plan.order), group.size)
    return counts, plans


def adaptive_threshold(values: np.ndarray, bin_width: float = 0.01) -> float:
    """The joint-pruning patent's δ: the lower edge of the first local-minimum bin of ``values``' histogram.

    Bins are ``[k w, (k+1) w)``; a bin is a local minimum when it holds fewer values than the bin
    before it and no more than the bin after it (beyond either end counts as +inf). With a
    polarised γ (a cluster near 0, a gap, a cluster above) δ falls at the start of the gap; with no
    valley before the bulk, δ is the first bin's lower edge and nothing is below it.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return -math.inf
    bins = np.floor(values / bin_width + EPSILON).astype(np.int64)
    first = int(bins.min())
    counts = np.bincount(bins - first).astype(np.float64)
    padded = np.concatenate([[np.inf], counts, [np.inf]])
    minima = np.nonzero((padded[1:-1] < padded[:-2]) & (padded[1:-1] <= padded[2:]))[0]
    return (first + int(minima[0])) * bin_width
