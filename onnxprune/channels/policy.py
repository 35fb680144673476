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

- ``latency_target`` F (HALP, Shen et al. 2022): greedy, globally, the block of channels with the
  least importance (normalised score) per millisecond of predicted latency saved goes, one
  rounding unit of one group at a time, until the model's predicted latency (the layer table of
  :mod:`onnxprune.channels.latency_model`) is at most F of the unpruned model's.

Rounding: ``round_to`` N rounds each group's kept count up to a multiple of N (or to the whole
group when that multiple would exceed it); 1 keeps exact counts. A concat-bound group (a dense
block, an Inception module's output) is rounded per slice instead: each producer's channels keep a
multiple of N (default 8) when every slice has at least 2N, and whole blocks of N go, lowest mean
score first. By default (``round_to`` None)
a group keeps multiples of 8, or of a smaller power of two for groups under 64 channels, so that
one step is at most 1/8 of the group (16 channels: multiples of 2; 32: of 4): coarser steps would
make a 16-channel group jump from 16 to 8 and a FLOPs target overshoot by far. Then, with
``latency_aware``, a group moves
to another count within a small window (5 % down, up by max(8, 10 %)) when the layer table times
its layers more than 10 % faster there (the count nearest where it was, among those within 10 % of
the fastest). A FLOPs/params target is re-checked with the rounded counts, lowering them further
where needed. Counts of layers onnxruntime cannot time stay at the multiples of 8.

Rules every mode obeys: only prunable channels with a finite score go; a group keeps at least
``max(min_channels, 1)`` channels, and every tensor axis of it keeps at least one position (a
Concat input, one half of a Split); groups with a member whose name
(a tensor, a node holding a parameter, a node reading or writing a member) matches an
``exclude`` regex (``re.search``) are left whole; with ``keep_residual``, so are groups that an
addition of two activations joins (a ResNet's residual stream: Li et al. prune only the inner
layers of each block, which least-squares recovery can then rebuild). Impossible requests raise
InputError.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.costs import CostModel
from onnxprune.channels.importance.bn_scale import BNScale
from onnxprune.channels.latency_model import LatencyModel
from onnxprune.core.errors import OptionError
from onnxprune.measure.latency_table import LatencyTable, LayerTimer
from onnxprune.measure.stats import ModelStats

log = logging.getLogger(__name__)

ADAPTIVE = "adaptive"
THRESHOLDS = (ADAPTIVE,)
EPSILON = 1e-9  # ratio * n within this of an integer counts as that integer
ALIGN = 8  # default rounding unit: onnxruntime's blocked convs want multiples of 8 (16 on AVX-512)
STEPS = 8  # ... but a default rounding step is at most 1/STEPS of its group
TIE = 0.1  # counts timed within this fraction of each other are equally fast (one-layer timings are noisy)
LOOKAHEAD = 8  # rounding units a latency-target step may remove from one group at once
REFINE_STEPS = 20  # tries at lowering a target's counts when latency rounding raised them above it


@dataclass
class PolicyConfig:
    ratio: float = 0.0
    global_ranking: bool = False
    flops_target: float | None = None
    params_target: float | None = None
    threshold: str | None = None
    min_channels: int = 1
    round_to: int | None = None  # None: multiples of 8 (smaller for small groups), then the fastest count near it
    exclude: Sequence[str] = ()
    keep_residual: bool = False  # leave groups that a residual addition joins whole (PFEC on ResNets)
    bin_width: float = 0.01
    latency_aware: bool = True  # time layers (cached) to round each group to a fast count
    latency_target: float | None = None
    latency_threads: int = 1  # onnxruntime threads the layer table is timed with
    latency_trials: int = 3  # pruned models built and timed to correct the table's prediction (0: trust it)

    @property
    def targets(self) -> bool:
        return self.flops_target is not None or self.params_target is not None


def select(
    channel_graph: ChannelGraph,
    scores: Mapping[int, np.ndarray],
    config: PolicyConfig,
    cost_model: CostModel | ModelStats | None = None,
    timer: LayerTimer | None = None,
) -> Selection:
    """Group id -> sorted channel indices to remove, for every group losing at least one channel.

    ``scores`` holds one array per group (groups without one are left whole). ``cost_model`` is
    needed for a FLOPs/params target: a CostModel, or the ModelStats of this graph to build one
    (without it, stats are counted with the graph's declared input shapes, batch 1). ``timer``
    gives layer latencies (default: the cached :class:`LatencyTable` at ``latency_threads``).
    """
    validate(config)
    patterns = [re.compile(pattern) for pattern in config.exclude]
    groups = [g for g in channel_graph.prunable if g.id in scores and not _excluded(channel_graph, g, patterns)
              and not (config.keep_residual and _residual(channel_graph, g))]
    latency = None
    if config.latency_target is not None or (config.round_to is None and config.latency_aware):
        latency = LatencyModel(channel_graph, groups, timer or LatencyTable(config.latency_threads))
    predicted = None
    if config.threshold == ADAPTIVE:
        counts, plans = _threshold_counts(channel_graph, groups, scores, config)
        counts = _refiner(plans, latency, config)(counts)
    else:
        plans = {g.id: _plan(g, scores[g.id], config) for g in groups}
        if config.latency_target is not None and latency is not None:
            counts, predicted = _latency_counts(plans, config.latency_target, latency)
        else:
            counts = _counts(channel_graph, plans, config, cost_model, _refiner(plans, latency, config))
    selection = Selection({gid: np.sort(plans[gid].order[:k]) for gid, k in counts.items() if k > 0})
    selection.predicted_latency = predicted
    return selection


class Selection(dict[int, np.ndarray]):
    """Group id -> sorted channel indices to remove; ``predicted_latency``: the fraction of the layer
    table's latency the pruned model keeps, where the policy predicted it (``latency_target``);
    ``measured_latency``: the fraction onnxruntime measured, where the pruned model was timed."""

    predicted_latency: float | None = None
    measured_latency: float | None = None


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
    _validate_latency_target(config)
    if config.min_channels < 0:
        raise OptionError(f"{{}} {config.min_channels} must be at least 0", "min_channels")
    if config.round_to is not None and config.round_to < 1:
        raise OptionError(f"{{}} {config.round_to} must be at least 1", "round_to")
    if config.latency_threads < 1:
        raise OptionError(f"{{}} {config.latency_threads} must be at least 1", "latency_threads")
    if config.latency_trials < 0:
        raise OptionError(f"{{}} {config.latency_trials} must be at least 0", "latency_trials")
    if not config.bin_width > 0:
        raise OptionError(f"{{}} {config.bin_width:g} must be positive", "bin_width")
    for pattern in config.exclude:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(f"{{}} {pattern!r} is not a valid regular expression: {exc}", "exclude") from exc


def _validate_latency_target(config: PolicyConfig) -> None:
    target = config.latency_target
    if target is None:
        return
    if not 0 < target < 1:
        raise OptionError(f"{{}} {target:g} must be in (0, 1): the fraction of the latency to keep", "latency_target")
    if config.ratio or config.targets or config.threshold is not None:
        raise OptionError("{} and {}/{}/{}/{} are exclusive: give one", "latency_target", "ratio", "flops_target",
                          "params_target", "threshold")
    if not config.latency_aware:
        raise OptionError("{} needs the layer latency table, which {} turns off", "latency_target", "latency_aware")


# --- per-group plans ----------------------------------------------------------------------------


@dataclass
class _Plan:
    """A group's removable channels, least important first; the legal removals are the prefixes of ``steps``."""

    group: ChannelGroup
    order: np.ndarray
    scorable: int  # prunable channels with a finite score: the base of a ratio
    limit: int  # most channels the floors let go
    steps: np.ndarray  # removal counts rounding allows, ascending from 0, none above ``limit``
    aligned: np.ndarray  # kept counts latency rounding may move the group to
    normalised: np.ndarray  # scores of ``order`` divided by the group's mean |score|

    def effective(self, wanted: int) -> int:
        """Channels removed when ``wanted`` are asked for: capped by the floors, kept count rounded up."""
        return int(self.steps[np.searchsorted(self.steps, min(int(wanted), self.limit), side="right") - 1])

    def previous(self, count: int) -> int:
        """The legal removal one step below ``count`` (0 at the bottom)."""
        return int(self.steps[max(int(np.searchsorted(self.steps, count)) - 1, 0)])

    def following(self, count: int) -> int:
        """The legal removal one step above ``count``; ``count`` when no more can go."""
        index = int(np.searchsorted(self.steps, count, side="right"))
        return int(self.steps[index]) if index < len(self.steps) else count


def _plan(group: ChannelGroup, score: np.ndarray, config: PolicyConfig, allowed: np.ndarray | None = None) -> _Plan:
    score = np.asarray(score, dtype=np.float64)
    candidate = group.prunable & np.isfinite(score)
    scale = float(np.abs(score[candidate]).mean()) if candidate.any() else 0.0
    if allowed is not None:
        candidate &= allowed
    ranked = np.nonzero(candidate)[0]
    ranked = ranked[np.argsort(score[ranked], kind="stable")]
    size, slice_unit = group.size, config.round_to or ALIGN
    slices = _slices(group)
    if slice_unit > 1 and len(slices) > 1 and min(len(part) for part in slices) >= 2 * slice_unit:
        order, steps = _sliced_order(ranked, slices, slice_unit, score)
        aligned = size - steps
    else:
        order = _keep_every_axis(group, ranked)
        unit = config.round_to if config.round_to is not None else default_unit(size)
        steps = size - np.array([*_multiples_below(size, unit), size])
        aligned = np.array([*range(ALIGN, size, ALIGN), size])
    limit = max(0, min(len(order), size - max(config.min_channels, 1)))
    normalised = score[order] / scale if scale > 0 else score[order]
    return _Plan(group, order, int(candidate.sum()) if allowed is None else len(order), limit,
                 np.unique(steps[steps <= limit]), aligned, normalised)


def default_unit(size: int) -> int:
    """The rounding unit of a group of ``size`` channels: ALIGN, or the largest power of two within 1/STEPS of it."""
    unit = ALIGN
    while unit > 1 and unit * STEPS > size:
        unit //= 2
    return unit


def _multiples_below(size: int, unit: int) -> range:
    """The positive multiples of ``unit`` below ``size``, largest first: the kept counts rounding allows."""
    return range((size - 1) // unit * unit, 0, -unit)


def _partial_axes(group: ChannelGroup) -> list[np.ndarray]:
    """Per axis that holds only some of the group's channels (a Concat input, a Split output), a mask of those."""
    masks = []
    for _, owner in group.members.values():
        member = np.zeros(group.size, dtype=bool)
        member[owner] = True
        if not member.all():
            masks.append(member)
    return masks


def _slices(group: ChannelGroup) -> list[np.ndarray]:
    """The group's channels split by the partial axes holding them (a dense block's growth convs, a concat's inputs)."""
    masks = _partial_axes(group)
    if not masks:
        return [np.arange(group.size)]
    _, labels = np.unique(np.stack(masks, axis=1), axis=0, return_inverse=True)
    labels = labels.reshape(-1)
    return sorted((np.nonzero(labels == label)[0] for label in np.unique(labels)), key=lambda part: part[0])


def _sliced_order(ranked: np.ndarray, slices: list[np.ndarray], unit: int, score: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Removal order and legal removal counts of a concat-bound group, every slice kept at a multiple of ``unit``.

    Rounding only the group's total leaves its producers (a dense block's stem and growth convs,
    an Inception module's branches) at unaligned counts, which onnxruntime runs outside its blocked
    NCHWc kernels with reorders around them. Here each slice loses whole blocks (its lowest-ranked
    channels first, keeping at least ``unit``), and blocks of all slices go in order of mean score.
    """
    slice_of = np.empty(int(max(part.max() for part in slices)) + 1, dtype=np.int64)
    for index, part in enumerate(slices):
        slice_of[part] = index
    blocks: list[tuple[float, int, int, np.ndarray]] = []
    for index, part in enumerate(slices):
        mine = ranked[slice_of[ranked] == index]
        size = len(part)
        cuts = [0, *(size - kept for kept in _multiples_below(size, unit))]
        cuts = [cut for cut in cuts if cut <= len(mine)]
        for position, (start, stop) in enumerate(zip(cuts, cuts[1:])):
            blocks.append((float(score[mine[start:stop]].mean()), index, position, mine[start:stop]))
    blocks.sort(key=lambda block: block[:3])
    order = np.concatenate([block[3] for block in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    return order, np.cumsum([0, *(len(block[3]) for block in blocks)])


def _keep_every_axis(group: ChannelGroup, ranked: np.ndarray) -> np.ndarray:
    """Drop from ``ranked`` the channels that would be the last of some axis holding only part of the group."""
    members = _partial_axes(group)
    if not members:
        return ranked
    left = [int(member.sum()) for member in members]  # channels still held, per partial axis
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


RESIDUAL_OPS = frozenset({"Add", "Sum"})


def _residual(channel_graph: ChannelGraph, group: ChannelGroup) -> bool:
    """Whether an Add/Sum reads two or more of ``group``'s tensors that are not constants."""
    tensors = channel_graph.graph.tensors()
    names = {name for name, _ in group.members}
    for name in names:
        tensor = tensors.get(name)
        for node in [] if tensor is None else tensor.outputs:
            joined = [t for t in node.inputs if t.name in names and not isinstance(t, gs.Constant)]
            if node.op in RESIDUAL_OPS and len({t.name for t in joined}) >= 2:
                log.info("group %d left whole: residual addition %s", group.id, node.name)
                return True
    return False


# --- modes ----------------------------------------------------------------------------------------


Refine = Callable[[dict[int, int]], dict[int, int]]
"""Rounded removal counts -> the counts latency rounding turns them into."""


def _counts(channel_graph: ChannelGraph, plans: dict[int, _Plan], config: PolicyConfig,
            cost_model: CostModel | ModelStats | None, refine: Refine) -> dict[int, int]:
    if config.targets:
        costs = cost_model if isinstance(cost_model, CostModel) else CostModel.build(channel_graph, cost_model)
        return _target_counts(plans, config, costs, refine)
    if config.global_ranking:
        wanted = math.floor(config.ratio * sum(p.scorable for p in plans.values()) + EPSILON)
        ranking = _GlobalRanking(plans)
        return refine(ranking.counts(ranking.smallest(functools.partial(_removes_at_least, wanted))))
    return refine(_uniform(plans, config.ratio))


def _refiner(plans: dict[int, _Plan], latency: LatencyModel | None, config: PolicyConfig) -> Refine:
    """Latency rounding of removal counts; the identity with an explicit ``round_to`` or without a table."""
    return functools.partial(_fastest, plans, latency) if latency is not None and config.round_to is None else _same


def _same(counts: dict[int, int]) -> dict[int, int]:
    return counts


def _fastest(plans: dict[int, _Plan], latency: LatencyModel, counts: dict[int, int]) -> dict[int, int]:
    """Each pruned group's removal count moved to the kept count its layers run fastest at, near where it was."""
    kept = {gid: plans[gid].group.size - count for gid, count in counts.items()}
    windows = {gid: _window(plans[gid], kept[gid]) for gid, count in counts.items() if count}
    times = latency.group_ms(windows, kept)  # each group timed with its neighbours at their rounded counts
    refined = dict(counts)
    for gid, window in windows.items():
        timed = [(ms, count) for count, ms in zip(window, times[gid]) if ms is not None]
        current = times[gid][0]
        if current is not None and min(timed)[0] < current / (1 + TIE):  # only a clear win moves the count
            fastest = min(ms for ms, _ in timed)
            near = [count for ms, count in timed if ms <= fastest * (1 + TIE)]
            refined[gid] = plans[gid].group.size - min(near, key=lambda count: (abs(count - window[0]), count))
    return refined


def _window(plan: _Plan, kept: int) -> list[int]:
    """``kept`` first, then the multiples of 8 (and the whole group) from 5 % below to max(8, 10 %) above it."""
    size = plan.group.size
    low, high = max(kept - kept // 20, size - plan.limit), min(kept + max(ALIGN, math.ceil(kept / 10)), size)
    near = plan.aligned[(plan.aligned >= low) & (plan.aligned <= high)]
    return [kept, *sorted({int(count) for count in near} - {0, kept})]


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


def _target_counts(plans: dict[int, _Plan], config: PolicyConfig, costs: CostModel, refine: Refine) -> dict[int, int]:
    """The fewest removals (globally ranked, or the smallest uniform ratio) that meet the targets.

    Latency rounding (``refine``) may keep more than the plain rounding the search used: then the
    search point moves on (a longer prefix, a larger ratio) until the refined counts meet the targets
    too, or falls back to the plain counts. Rounding steps overshoot a target (a uniform ratio
    moves every 16-channel group by 2 at once): the slack is then given back (:func:`_give_back`).
    """
    met = _Target(plans, config, costs)
    _check_reachable(config, costs, met.left({gid: plan.effective(plan.limit) for gid, plan in plans.items()}))
    if config.global_ranking:
        ranking = _GlobalRanking(plans)
        prefix = ranking.smallest(met)
        step = max(1, len(ranking.owner) // 200)
        tries = (ranking.counts(min(prefix + i * step, len(ranking.owner))) for i in range(REFINE_STEPS))
        return _give_back(plans, _first_met(tries, met, refine, ranking.counts(prefix)), met)
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the ratio: counts only grow with it
        middle = (low + high) / 2
        low, high = (low, middle) if met(_uniform(plans, middle)) else (middle, high)
    tries = (_uniform(plans, min(high + i * 0.005, 1.0)) for i in range(REFINE_STEPS))
    return _give_back(plans, _first_met(tries, met, refine, _uniform(plans, high)), met)


def _give_back(plans: dict[int, _Plan], counts: dict[int, int], met: _Target) -> dict[int, int]:
    """``counts`` with removed channels restored, one rounding unit of one group at a time, while the targets hold.

    The unit restored first is the one whose channels score highest (normalised): the most
    important channels that rounding, not the target, had taken.
    """
    counts = dict(counts)
    open_groups = {gid for gid, count in counts.items() if count > 0}
    while open_groups:
        gid = max(sorted(open_groups), key=functools.partial(_restored_worth, plans, counts))
        trial = {**counts, gid: plans[gid].previous(counts[gid])}
        if met(trial):
            counts = trial
            if trial[gid] == 0:
                open_groups.discard(gid)
        else:
            open_groups.discard(gid)
    return counts


def _first_met(tries: Iterable[dict[int, int]], met: _Target, refine: Refine, fallback: dict[int, int]
               ) -> dict[int, int]:
    for counts in tries:
        refined = refine(counts)
        if met(refined):
            return refined
    return fallback


def _restored_worth(plans: dict[int, _Plan], counts: dict[int, int], gid: int) -> float:
    """Mean normalised score of the channels that giving one unit back to group ``gid`` would restore."""
    plan, count = plans[gid], counts[gid]
    return float(plan.normalised[plan.previous(count):count].mean())


# --- latency target (HALP) ----------------------------------------------------------------------


def _latency_counts(plans: dict[int, _Plan], target: float, latency: LatencyModel) -> tuple[dict[int, int], float]:
    """Removal counts whose predicted latency is at most ``target`` of the whole model's, and the fraction kept.

    Greedy: each step removes the rounding units (up to LOOKAHEAD at once) of the group whose move
    has the least normalised importance per millisecond it saves; after a step only the groups
    sharing a layer with it are re-priced. A move of several units can overshoot the target: the
    most important units then come back while the prediction stays within it.
    """
    latency.group_ms({gid: _grid(plan) for gid, plan in plans.items()})
    whole = latency.time_whole()
    if whole <= 0:
        raise OptionError("{} needs layer latencies, and onnxruntime could not time any layer of this model",
                          "latency_target")
    greedy = _Greedy(plans, latency, target * whole)
    while greedy.ms > greedy.goal + EPSILON:
        if not greedy.step():
            raise OptionError(f"{{}} {target:g} is unreachable: with {{}} the floor is "
                              f"{greedy.ms / whole:.2f} of the predicted latency", "latency_target", "min_channels")
    greedy.give_back()
    return greedy.removed, greedy.ms / whole


def _grid(plan: _Plan) -> list[int]:
    """Kept counts to time for interpolation: the legal ones nearest each eighth of the group, the floor, the whole."""
    size, legal = plan.group.size, plan.group.size - plan.steps
    counts = {int(legal[np.abs(legal - size * j / 8).argmin()]) for j in range(1, 8)}
    return sorted({*counts, size, int(legal.min())})


class _Greedy:
    """Removal counts per group and the model's predicted ms, lowered one block at a time."""

    def __init__(self, plans: dict[int, _Plan], latency: LatencyModel, goal: float) -> None:
        self.plans, self.latency, self.goal = plans, latency, goal
        self.removed = {gid: 0 for gid in plans}
        self.kept = {gid: plan.group.size for gid, plan in plans.items()}
        self.layer_ms = [latency.layer_ms(layer, self.kept) for layer in range(len(latency.layers))]
        self.ms = float(sum(self.layer_ms))
        self.neighbours = {gid: {other for layer in latency.layers_of(gid)
                                 for other in latency.layer_groups[layer] if other in plans} for gid in plans}
        self.version = dict.fromkeys(plans, 0)
        self.heap: list[tuple[float, int, int, int]] = []  # price, group, version, kept count after the move
        for gid in plans:
            self._price(gid)

    def _next(self, gid: int) -> int:
        """Kept count after the next block of ``gid`` goes (the current count when nothing more can go)."""
        plan = self.plans[gid]
        return plan.group.size - plan.following(self.removed[gid])

    def _saving(self, gid: int, kept: int) -> float:
        trial = {**self.kept, gid: kept}
        return sum(self.layer_ms[layer] - self.latency.layer_ms(layer, trial) for layer in self.latency.layers_of(gid))

    def _price(self, gid: int) -> None:
        """Queue ``gid``'s cheapest move: up to LOOKAHEAD blocks at once, the fewest at the best price.

        Looking ahead steps over counts that are slower than their neighbours (14 of 16 channels
        leaves onnxruntime's blocked kernels; 8 does not), which one block at a time never passes.
        """
        self.version[gid] += 1
        plan, size = self.plans[gid], self.plans[gid].group.size
        best: tuple[float, int] | None = None
        kept = self.kept[gid]
        for _ in range(LOOKAHEAD):
            following = size - plan.following(size - kept)
            if following >= kept:
                break
            kept = following
            saving = self._saving(gid, kept)
            loss = max(float(plan.normalised[self.removed[gid]: size - kept].sum()), 0.0)
            if saving > 0 and (best is None or loss / saving < best[0]):
                best = (loss / saving, kept)
            if best is not None and saving >= self.ms - self.goal:  # enough to reach the target: no further
                break
        if best is None and kept < self.kept[gid]:
            best = (math.inf, self._next(gid))  # nothing ahead saves time: one block, last of all
        if best is not None:
            heapq.heappush(self.heap, (best[0], gid, self.version[gid], best[1]))

    def give_back(self) -> None:
        """Return removed units, the most important first, while the predicted ms stays within the goal."""
        returned = True
        while returned:
            returned = False
            last_units = {gid: self._last_unit(gid) for gid in self.plans if self.removed[gid]}
            for gid in sorted(last_units, key=lambda gid: -last_units[gid]):
                plan = self.plans[gid]
                kept = plan.group.size - plan.previous(self.removed[gid])
                if self.ms - self._saving(gid, kept) <= self.goal + EPSILON:
                    self._move(gid, kept)
                    returned = True

    def _last_unit(self, gid: int) -> float:
        """Mean normalised importance of the last unit ``gid`` lost."""
        plan, removed = self.plans[gid], self.removed[gid]
        return float(plan.normalised[plan.previous(removed):removed].mean())

    def _move(self, gid: int, kept: int) -> None:
        self.kept[gid] = kept
        self.removed[gid] = self.plans[gid].group.size - kept
        for layer in self.latency.layers_of(gid):
            self.layer_ms[layer] = self.latency.layer_ms(layer, self.kept)
        self.ms = float(sum(self.layer_ms))

    def step(self) -> bool:
        """Make the cheapest move; False when no group can lose more."""
        while self.heap:
            _, gid, version, kept = heapq.heappop(self.heap)
            if version == self.version[gid]:
                break
        else:
            return False
        self._move(gid, kept)
        for other in self.neighbours[gid] | {gid}:
            self._price(other)
        return True


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
