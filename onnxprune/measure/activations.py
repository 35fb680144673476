"""Intermediate activations of a model on calibration data, streamed batch by batch.

Every data-driven step (BN re-calibration, least-squares reconstruction, activation-based channel
criteria) needs the values of a few inner tensors over many inputs. Holding them all for every
batch does not scale (one 64x56x56 float32 map is 800 kB per image), so this module runs an
onnxruntime session over the feeds and hands each batch's values to a ``visit`` callback that
reduces them (sums, Gram matrices, histograms) before the next batch is computed.

How: on a copy of the model, the wanted tensors become the graph's only outputs (a tensor whose
type or shape inference could not find is declared by name alone; onnxruntime infers the rest),
and every node (initializer, graph input) they do not depend on is dropped, so a tap on an early
layer only runs the layers before it. Graph inputs among ``names`` are passed through from the feed.

Layer-by-layer recovery (BN re-estimation, reconstruction) measures a network that changes after
each stage; :class:`Frontier` carries the calibration batches through it stage by stage, starting
each pass from activations cached in front of the stage (:func:`cut`) instead of from the inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from onnxprune.core.errors import InputError
from onnxprune.measure import verify

log = logging.getLogger(__name__)

CACHE_LIMIT = 1 << 30  # bytes of cut values a Frontier keeps between passes

Feed = Mapping[str, np.ndarray]
Visit = Callable[[Mapping[str, np.ndarray]], None]


class Tap:
    """A session that computes ``names`` (and nothing they do not need) for one feed at a time.

    ``inputs`` (name -> dtype) makes the session start from those tensors instead of the graph's
    inputs: a segment of the model, fed with values computed earlier (see :class:`Frontier`).
    For callers that must step two models in lockstep on the same batch (reconstruction compares
    a pruned layer's input with the original layer's output); everyone else uses :func:`collect`.
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], threads: int | None = None,
                 inputs: Mapping[str, np.dtype] | None = None) -> None:
        self.names = list(dict.fromkeys(names))
        given = inputs if inputs is not None else {value.name: None for value in model.graph.input}
        self._passed = [name for name in self.names if name in given]
        computed = [name for name in self.names if name not in given]
        segment = truncated(model, computed, inputs) if computed else None
        self._session = verify.session(segment, threads) if segment is not None else None
        self._computed = computed

    def __call__(self, feed: Feed) -> dict[str, np.ndarray]:
        """The values of ``names`` for one feed, by name."""
        values = {name: np.asarray(feed[name]) for name in self._passed}
        if self._session is not None:
            outputs = self._session.run(self._computed, verify.select_inputs(self._session, feed))
            values.update(zip(self._computed, outputs))
        return {name: values[name] for name in self.names}


def collect(
    model: onnx.ModelProto,
    names: Sequence[str],
    feeds: Iterable[Feed],
    visit: Visit,
    threads: int | None = None,
    progress: str | None = None,
) -> None:
    """Run ``model`` on each feed and call ``visit({name: value})`` once per feed, in order.

    Only one batch's activations are alive at a time: ``visit`` should reduce them (sums, Gram
    matrices, histograms) rather than keep them, or memory grows with the data set again.
    ``progress`` is a tqdm description (None: no bar; bars only show on terminals).
    Raises InputError for a name no node produces and no graph input carries.
    """
    tap = Tap(model, names, threads)
    total = len(feeds) if isinstance(feeds, Sequence) else None
    for feed in tqdm(feeds, desc=progress, total=total, unit="batch", leave=False,
                     disable=None if progress else True):
        visit(tap(feed))


def stages(graph: gs.Graph, nodes: Sequence[gs.Node]) -> list[list[gs.Node]]:
    """``nodes`` in passes that can each be measured at once: a node's stage is 1 + the highest stage upstream of it.

    For layer-by-layer recovery, where updating a node changes what every node after it sees: the
    inputs of stage k depend only on stages < k, so after stages < k are updated one pass over the
    data serves all of stage k. Precondition: ``graph.nodes`` is topologically sorted.
    """
    chosen = {id(node) for node in nodes}
    level: dict[str, int] = {}  # tensor name -> highest stage upstream of it
    result: list[list[gs.Node]] = []
    for node in graph.nodes:
        upstream = max((level.get(tensor.name, 0) for tensor in node.inputs), default=0)
        if id(node) in chosen:
            upstream += 1
            while len(result) < upstream:
                result.append([])
            result[upstream - 1].append(node)
        for tensor in node.outputs:
            level[tensor.name] = upstream
    return result


def cut(graph: gs.Graph, nodes: Sequence[gs.Node], needed: Sequence[str]) -> list[str]:
    """Tensors from which ``needed`` can be computed and that no change to ``nodes`` affects.

    The inputs of the nodes on the way to ``needed`` that ``nodes`` (or anything computed from
    them) runs, which are not themselves computed from ``nodes``; plus the ``needed`` tensors that
    are not. Precondition: ``graph.nodes`` is topologically sorted.
    """
    relevant = _ancestors(graph, needed)
    chosen = {id(node) for node in nodes}
    tainted: set[str] = set()
    front: dict[str, None] = {}
    for node in graph.nodes:
        if id(node) in relevant and (id(node) in chosen or any(tensor.name in tainted for tensor in node.inputs)):
            tainted.update(tensor.name for tensor in node.outputs)
            read = [tensor.name for tensor in node.inputs if isinstance(tensor, gs.Variable) and tensor.name]
            front.update(dict.fromkeys(name for name in read if name not in tainted))
    front.update(dict.fromkeys(name for name in needed if name not in tainted))
    return list(front)


def _ancestors(graph: gs.Graph, names: Sequence[str]) -> set[int]:
    """Ids of the nodes the tensors ``names`` are computed with."""
    tensors = graph.tensors()
    found: set[int] = set()
    stack = [tensors[name] for name in names if name in tensors]
    while stack:
        for node in stack.pop().inputs:
            if id(node) not in found:
                found.add(id(node))
                stack.extend(node.inputs)
    return found


class Frontier:
    """Calibration batches carried through a model that is updated stage by stage (see :func:`stages`).

    Layer-by-layer recovery updates stage k after measuring it, so stage k+1 must see the network
    with stage k updated. Recomputing each pass from the graph inputs costs a prefix of the network
    per stage, quadratic in depth. Instead each pass also returns a :func:`cut` from which the later
    stages' inputs follow and that no later update changes (the one in front of the stage being
    measured), and the next pass starts from it: the whole sweep costs about two forward passes.
    The price is memory: the cut of every calibration batch (ResNet-56, 500 CIFAR images: two
    16x32x32 float maps each, 64 MB). When a cut would exceed ``limit`` bytes it is not kept, and
    the next pass starts from the feeds again.
    """

    def __init__(self, feeds: Sequence[Feed], limit: int = CACHE_LIMIT) -> None:
        self._feeds = feeds
        self._cache: list[dict[str, np.ndarray]] | None = None
        self.limit = limit

    def run(self, model: onnx.ModelProto, names: Sequence[str], keep: Sequence[str] = (),
            threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``names`` for every batch, computed from the last cut (or the feeds); keep ``keep`` as the next cut.

        ``model`` must compute ``names`` and ``keep`` from the cut the previous run kept. The
        cut is replaced only when the iteration completes; an abandoned one restarts from the feeds.
        """
        source, self._cache = self._cache, None
        inputs = {name: value.dtype for name, value in source[0].items()} if source else None
        tap = Tap(model, [*names, *keep], threads, inputs)
        batches = source if source else self._feeds
        cache: list[dict[str, np.ndarray]] | None = [] if keep else None
        size = 0
        for index in range(len(batches)):
            values = tap(batches[index])
            if source:
                source[index] = {}  # free the old cut as the new one grows
            yield {name: values[name] for name in names}
            if cache is not None:
                cache.append({name: values[name] for name in keep})
                size += sum(value.nbytes for value in cache[-1].values())
                if size > self.limit:
                    log.info("cut of %d tensor(s) exceeds %d bytes; next pass starts from the inputs", len(keep),
                             self.limit)
                    cache = None
        self._cache = cache


def truncated(model: onnx.ModelProto, names: Sequence[str],
              inputs: Mapping[str, np.dtype] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names``, without the nodes none of them needs.

    With ``inputs`` (name -> dtype), those tensors become the graph's inputs (declared without a
    shape) and nothing before them is kept; otherwise the graph inputs stay, minus unread ones.
    """
    graph = model.graph
    produced = {output: node for node in graph.node for output in node.output if output}
    starts = set(inputs or ())
    missing = [name for name in names if name not in produced and name not in starts]
    if missing:
        raise InputError(f"no node computes tensor(s) {', '.join(missing[:5])}")
    needed = _needed_nodes(names, produced, starts)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [node for node in graph.node if id(node) in needed]
    read = {name for node in kept for name in _reads(node)}
    typed = {value.name: value for value in [*graph.value_info, *graph.output]}
    del result.graph.node[:]
    result.graph.node.extend(kept)
    del result.graph.output[:]
    result.graph.output.extend(typed[name] if name in typed else onnx.ValueInfoProto(name=name) for name in names)
    del result.graph.initializer[:]
    result.graph.initializer.extend(init for init in graph.initializer if init.name in read - starts)
    del result.graph.input[:]
    if inputs is None:  # nothing feeds what none reads
        result.graph.input.extend(value for value in graph.input if value.name in read)
    else:
        result.graph.input.extend(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None) for name, dtype in inputs.items()
            if name in read)
    log.debug("tap on %d tensor(s): %d of %d nodes kept", len(names), len(kept), len(graph.node))
    return result


def _needed_nodes(names: Sequence[str], produced: Mapping[str, onnx.NodeProto], starts: set[str]) -> set[int]:
    """Ids of the nodes ``names`` depend on (a walk back from the wanted tensors, stopping at ``starts``)."""
    needed: set[int] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name in starts or name not in produced:
            continue
        seen.add(name)
        node = produced[name]
        if id(node) not in needed:
            needed.add(id(node))
            stack.extend(_reads(node))
    return needed


def _reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads, with those its subgraphs (If/Loop/Scan bodies) take from outer scope."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for body in bodies:
            local = {init.name for init in body.initializer} | {value.name for value in body.input}
            local |= {output for inner in body.node for output in inner.output}
            names.extend(name for inner in body.node for name in _reads(inner) if name not in local)
    return names
