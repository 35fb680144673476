"""Remove channels from a graph: every position a channel occupies, on every tensor axis, goes at once.

Before (8 of the 32 channels of conv1's group removed):
    x -> Conv W1[32,16,3,3] b1[32] -> BN(32) -> Relu -> Conv W2[64,32,3,3] -> y
After:
    x -> Conv W1[24,16,3,3] b1[24] -> BN(24) -> Relu -> Conv W2[64,24,3,3] -> y

Idea: the channel analysis (``onnxprune.channels.analyse``) gives, for each group, the positions
each channel holds on every axis it touches (a filter row, a BN entry, a block of Gemm columns
behind a Flatten, a slice of a Concat ...). Removing a channel deletes all of them: constants are
sliced with ``np.delete`` (a constant shared by several nodes is one axis, sliced once); variables
get their new shapes from shape inference; what is neither (a depthwise conv's ``group``, a Reshape
target, Split sizes, Pad amounts) is adjusted by the node's handler, whose ``update`` sees the
removed positions before any constant changes.

Exactness: when the removed channels contribute exactly 0 to everything kept, the outputs do not
change. ``zero_channels`` makes that true on the unpruned graph, which is the test oracle. Groups
with ``inexact`` reasons (a norm or mean over the channel axis) change the kept channels' values.

Preconditions: ``channel_graph`` was computed by ``analyse`` on this very graph, unchanged since
(cleaned, sorted, shape-inferred); only prunable channels are removed; every axis keeps at least
one position. Graph inputs and outputs are blocked by the analysis, so the interface never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, distinct
from onnxprune.channels.handlers import load_all
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, ROLE_PARAM, ROLE_SCALE, Dim
from onnxprune.core.errors import InputError
from onnxprune.core.graph import infer_shapes, static_shape
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "prune_channels"

NAMES_SHOWN = 6  # node names per report line
NORMS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization")
ZERO_PRESERVING = ("Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean")  # op(0, 0) == 0 for a zeroed operand


def run(graph: gs.Graph, channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray]) -> PassReport:
    """Delete the channels ``remove`` maps group ids to (indices within each group) from ``graph``.

    Raises InputError for an unknown group, an index out of range, a channel that is not prunable,
    or a choice that would remove every channel of a group or every position of an axis. Leaves
    the graph cleaned, sorted and shape-inferred (the state ``pipeline.prepare`` gives).
    """
    chosen = _validate(channel_graph, remove)
    removed = removed_positions(channel_graph, chosen)
    interface, known = _interface(graph), _static_variables(graph)
    assert not {name for name, _ in removed} & interface.keys(), "graph inputs/outputs must be blocked"
    nodes = _update_nodes(graph, removed)
    params = _slice_constants(graph, removed)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    infer_shapes(graph)  # what pipeline.prepare does; importing the pipeline here would be circular
    assert _interface(graph) == interface, "pruning changed the graph's input or output shapes"
    lost = sorted(known - _static_variables(graph))
    assert not lost, f"shapes no longer infer after pruning (a handler missed an update?): {lost[:5]}"
    report = PassReport(NAME)
    groups = {group.id: group for group in channel_graph.groups}
    report.rewrites.extend(_describe(groups[gid], channels) for gid, channels in chosen.items())
    log.info("%s: %d channel(s) of %d group(s), %d parameter(s), %d node(s) updated", NAME,
             sum(map(len, chosen.values())), len(chosen), params, nodes)
    return report


def removed_positions(channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray]) -> dict[Dim, np.ndarray]:
    """Positions to delete per axis: the union over groups of the positions of their removed channels."""
    groups = {group.id: group for group in channel_graph.groups}
    removed: dict[Dim, list[np.ndarray]] = {}
    for gid, channels in remove.items():
        group = groups[gid]
        for dim in group.members:
            where = group.positions(dim, np.asarray(channels, dtype=np.int64))
            if len(where):
                removed.setdefault(dim, []).append(where)
    return {dim: distinct(np.concatenate(parts)) for dim, parts in removed.items()}


def kept_channels(channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Per activation that loses channels, the indices of its channel axis the pruning keeps (sorted).

    What data-driven recovery needs to line a pruned tensor up with its original: position ``i`` of
    the pruned tensor is position ``kept[name][i]`` of the unpruned one. Only variables with one
    shrinking axis are listed (constants have several, e.g. a filter's rows and columns); a tensor
    not listed keeps every channel. Names are those of the graph ``channel_graph`` was computed on.
    """
    tensors = channel_graph.graph.tensors()
    removed = removed_positions(channel_graph, _validate(channel_graph, remove))
    axes: dict[str, list[Dim]] = {}
    for dim in removed:
        if isinstance(tensors.get(dim[0]), gs.Variable):
            axes.setdefault(dim[0], []).append(dim)
    return {
        name: np.setdiff1d(np.arange(channel_graph.relations.sizes[dims[0]]), removed[dims[0]])
        for name, dims in axes.items()
        if len(dims) == 1
    }


def zero_channels(graph: gs.Graph, channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray]) -> int:
    """Zero every parameter through which the channels ``remove`` names reach the rest of the graph.

    The oracle of the surgery: pruning channels zeroed this way must leave the outputs unchanged
    (for groups without ``inexact`` reasons). Zeroed, per group: the producers' filters and biases
    (role "out"), normalisation scales and biases (so a BN after the conv outputs 0, not its beta),
    per-channel constants of ops that keep 0 at 0 (Add, Mul, ...), and the consumers' input
    columns (role "in"), which also covers activations with f(0) != 0 such as a sigmoid gate.
    Positions no parameter feeds (the zero channels an option-A Pad adds) need nothing. The same
    validation as ``run``; constants are changed in place. Returns the number of zeroed elements.
    """
    chosen = _validate(channel_graph, remove)
    groups = {group.id: group for group in channel_graph.groups}
    nodes = {node.name: node for node in graph.nodes}
    tensors = graph.tensors()
    zeroed = 0
    for gid, channels in chosen.items():
        group = groups[gid]
        for dim in group.constants:
            constant = tensors[dim[0]]
            if not isinstance(constant, gs.Constant) or not _feeds_channel(group, dim, nodes, constant):
                continue
            values = np.array(constant.values)
            index: list[slice | np.ndarray] = [slice(None)] * values.ndim
            index[dim[1]] = group.positions(dim, channels)
            values[tuple(index)] = 0
            constant.values = values
            zeroed += int(np.prod(values[tuple(index)].shape))
    return zeroed


def _feeds_channel(group: ChannelGroup, dim: Dim, nodes: dict[str, gs.Node], tensor: gs.Tensor) -> bool:
    """Whether zeroing this parameter axis is needed and safe (never a BN variance or a divisor)."""
    node_name, op, role = group.roles.get(dim, ("", "", ""))
    if role in (ROLE_OUT, ROLE_IN, ROLE_SCALE):
        return True
    if role != ROLE_PARAM or node_name not in nodes:
        return False
    if op in NORMS:
        inputs = nodes[node_name].inputs
        return len(inputs) > 2 and inputs[2] is tensor
    return op in ZERO_PRESERVING


def _validate(channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """``remove`` as sorted unique int64 arrays, empty entries dropped; InputError when it cannot be cut."""
    groups = {group.id: group for group in channel_graph.groups}
    chosen: dict[int, np.ndarray] = {}
    for gid, channels in remove.items():
        if gid not in groups:
            raise InputError(f"no channel group {gid}: the graph has groups 0..{len(groups) - 1}")
        group = groups[gid]
        channels = np.unique(np.asarray(channels, dtype=np.int64).reshape(-1))
        if not len(channels):
            continue
        if channels[0] < 0 or channels[-1] >= group.size:
            raise InputError(f"group {gid} has channels 0..{group.size - 1}, not {channels.tolist()}")
        blocked = channels[~group.prunable[channels]]
        if len(blocked):
            why = group.reasons[0] if group.reasons else "no reason recorded"
            raise InputError(f"channel {int(blocked[0])} of group {gid} is not prunable: {why}")
        if len(channels) == group.size:
            raise InputError(f"would remove every channel of group {gid}")
        _check_axes(group, channels, channel_graph.relations.sizes)
        chosen[gid] = channels
    return chosen


def _check_axes(group: ChannelGroup, channels: np.ndarray, sizes: Mapping[Dim, int]) -> None:
    """No axis may lose all its positions (a Concat input, one branch of a group, ...)."""
    for dim in group.members:
        if len(group.positions(dim, channels)) == sizes[dim]:
            raise InputError(f"would remove every channel of axis {dim[1]} of '{dim[0]}' (group {group.id})")


def _update_nodes(graph: gs.Graph, removed: Mapping[Dim, np.ndarray]) -> int:
    """Let the handler of every node touching a shrinking tensor adjust attributes and shape constants."""
    handlers = load_all()
    shrinking = {name for name, _ in removed}
    count = 0
    for node in list(graph.nodes):
        if any(tensor.name in shrinking for tensor in [*node.inputs, *node.outputs]):
            handler = handlers.get(node.op)
            assert handler is not None, f"{node.op} '{node.name}' has no handler, so its tensors are blocked"
            handler.update(graph, node, removed)
            count += 1
    return count


def _slice_constants(graph: gs.Graph, removed: Mapping[Dim, np.ndarray]) -> int:
    """Delete the removed positions from every constant axis; returns how many elements went.

    ``take`` of the kept positions, not ``np.delete``: the same values, 4x faster on a conv weight.
    """
    tensors = graph.tensors()
    by_tensor: dict[str, list[Dim]] = {}
    for dim in removed:
        by_tensor.setdefault(dim[0], []).append(dim)
    count = 0
    for name, dims in by_tensor.items():
        constant = tensors[name]
        if not isinstance(constant, gs.Constant):
            continue  # a variable: shape inference gives its new shape
        values = np.asarray(constant.values)
        before = values.size
        for _, axis in dims:
            kept = np.ones(values.shape[axis], dtype=bool)
            kept[removed[(name, axis)]] = False
            values = values.take(np.flatnonzero(kept), axis=axis)
        constant.values = np.ascontiguousarray(values)
        count += before - values.size
    return count


def _interface(graph: gs.Graph) -> dict[str, list | None]:
    """Static dims of the graph's inputs and outputs; symbolic ones (renamed by each inference) as None."""
    return {
        t.name: None if t.shape is None else [d if isinstance(d, (int, np.integer)) else None for d in t.shape]
        for t in [*graph.inputs, *graph.outputs]
    }


def _static_variables(graph: gs.Graph) -> set[str]:
    return {name for name, t in graph.tensors().items() if isinstance(t, gs.Variable) and static_shape(t) is not None}


def _describe(group: ChannelGroup, channels: np.ndarray) -> str:
    """'group 3: removed 8 of 32 channels (conv1, bn1, conv2)': the nodes whose parameters were cut."""
    names = list(dict.fromkeys(node for node, _, _ in group.roles.values()))
    shown = ", ".join(names[:NAMES_SHOWN]) + (f", +{len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
    return f"group {group.id}: removed {len(channels)} of {group.size} channels ({shown})"
