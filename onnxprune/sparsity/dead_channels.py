"""Remove the filters and neurons unstructured pruning left all-zero: structured pruning that is exact.

A channel contributes nothing to the kept ones, and the channel pruner's surgery
(:mod:`onnxprune.channels.surgery`) removes it without changing any output, when

- *unread*: every consumer's input column of it (the next conv's ``W[:, c]``, the Gemm columns
  behind a Flatten) is zero — whatever the channel holds, nothing reads it; or
- *silent*: every producer's filter *and* bias of it is zero, and the ops on its way keep 0 at 0
  (a Relu, a max pool, not a sigmoid, not a BatchNormalization's shift).

Both are the surgery's own oracle (``zero_channels``: prune what contributes 0): the chosen
channels are zeroed the oracle's way, which unread ones make exact by themselves; for silent ones
the zeroing is checked against the model before it with onnxruntime and, if any output moved,
only the unread channels are removed. A group always keeps one channel (its strongest), and
groups whose channels mix in a norm (``inexact``) are left alone.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.api.prune import prepare_for_pruning
from onnxprune.channels import analyse, surgery
from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.importance.magnitude import Slices, per_channel, role_slices
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT
from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError
from onnxprune.measure import verify
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "remove_dead_channels"
EXACT_REL = 1e-6  # zeroing silent channels must move no output by more than this of its scale

Feeds = list[dict[str, np.ndarray]]
Choice = dict[int, np.ndarray]


def run(graph: gs.Graph, template: onnx.ModelProto, feeds: Feeds) -> PassReport:
    """Remove every dead channel of ``graph`` (in place); ``feeds`` check the silent ones' exactness."""
    prepare_for_pruning(graph)
    channel_graph = analyse(graph)
    unread, silent = find(channel_graph)
    remove = _cuttable(channel_graph, _union(unread, silent))
    if silent and remove and not _zeroing_exact(model_io.to_model(graph, template), remove, feeds):
        log.info("%s: zeroing the silent channels changed the outputs; removing the unread ones only", NAME)
        remove = _cuttable(channel_graph, unread)
    if not remove:
        return PassReport(NAME)
    surgery.zero_channels(graph, channel_graph, remove)
    return surgery.run(graph, channel_graph, remove)


def find(channel_graph: ChannelGraph) -> tuple[Choice, Choice]:
    """Per prunable exact group, its unread and its silent channels (each group keeps its strongest one)."""
    unread: Choice = {}
    silent: Choice = {}
    graph = channel_graph.graph
    for group in channel_graph.prunable:
        if group.inexact:
            continue
        inputs, outputs = _magnitude(group, role_slices(group, graph, ROLE_IN)), _magnitude(
            group, role_slices(group, graph, ROLE_OUT))
        strongest = int(np.nanargmax(np.nan_to_num(inputs, nan=0.0) + np.nan_to_num(outputs, nan=0.0)))
        for found, total in ((unread, inputs), (silent, outputs)):
            dead = (total == 0) & group.prunable
            dead[strongest] = False
            if dead.any():
                found[group.id] = np.flatnonzero(dead)
    return unread, silent


def _magnitude(group: ChannelGroup, slices: list[Slices]) -> np.ndarray:
    """Sum of |w| per channel over ``slices`` (NaN where there are none: never dead)."""
    return per_channel(group, slices, lambda s: np.abs(s.rows).sum(axis=1))


def _union(first: Choice, second: Choice) -> Choice:
    return {gid: np.union1d(first.get(gid, []), second.get(gid, [])).astype(np.int64) for gid in {*first, *second}}


def _cuttable(channel_graph: ChannelGraph, remove: Choice) -> Choice:
    """The groups the surgery accepts (none may lose a whole Concat input or branch)."""
    accepted = {}
    for gid, channels in remove.items():
        try:
            surgery.kept_channels(channel_graph, {gid: channels})
        except InputError as error:
            log.info("%s: group %d kept whole: %s", NAME, gid, error)
            continue
        accepted[gid] = channels
    return accepted


def _zeroing_exact(before: onnx.ModelProto, remove: Choice, feeds: Feeds) -> bool:
    """Whether zeroing ``remove`` the oracle's way, on a copy of ``before``, leaves its outputs where they were.

    The copy is analysed afresh: the analysis is deterministic, so its group ids are the caller's.
    """
    trial = model_io.to_graph(before)
    prepare_for_pruning(trial)
    surgery.zero_channels(trial, analyse(trial), remove)
    after = model_io.to_model(trial, before)
    return verify.compare_scaled(before, after, feeds, rel=EXACT_REL).passed
