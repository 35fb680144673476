"""Refit pruned layers by least squares so they reproduce the original layers' outputs (He et al. 2017, ThiNet).

Before (conv2's input lost channels; its kept filters were trained for the full input):
    x' -> Conv2(W[:, kept_in]) -> y' ≈ y
After:
    x' -> Conv2(W*, b*) -> y',   (W*, b*) = argmin Σ ||W x'_p + b − y_p||² + λ ||W||²

where x'_p is the receptive field (im2col patch) of output position p in the PRUNED network's
activations and y_p the ORIGINAL layer's output at p in the original network, restricted to the
output channels the pruned layer kept. Each output channel is an independent ridge regression on
the same Gram matrix, so one solve of

    (XᵀX + λ' D) [W; b] = XᵀY,   λ' = λ · tr(XᵀX)_W / n_W,   D = diag(1, ..., 1, 0)

per layer gives all of them (the bias is not penalised; λ is relative to the mean diagonal of the
weight block, so it is unit-free). XᵀX and XᵀY are accumulated in float64 batch by batch; at most
``positions`` output positions per image enter (seeded, uniform without replacement).

Order: layers are refitted in topological stages (see ``activations.stages``): each stage sees the
already-refitted layers before it, so a refit also corrects the error the layers before it left.

Which layers: every Conv (group 1), Gemm and MatMul with a constant weight whose input activation
differs from the original's, i.e. that lies downstream of a pruned tensor, not only those whose input
lost channels: a layer with an intact input still receives the errors of everything before it.
Layers that cannot be refitted (grouped or depthwise convs, ConvTranspose, non-constant weights, no
matching original tensor) are left alone, with the reason in the report. A MatMul has no bias to
refit. When the original layer feeds a BatchNormalization, the match is made after it: the target is
the original BN's output z, mapped back through the pruned graph's own BN, (z − t) / s with
BN(y) = s y + t, or taken as it is when that BN was folded into the layer. So the refit is right
whether the pruned graph's BNs were folded, kept, or re-estimated (``recalibrate_bn``) before it.

Measured on ResNet-20, L1 global pruning to 70 % of the FLOPs (BN kept), 500 CIFAR-10 training
images for calibration, top-1 on the 1000 shipped test images (unpruned 79.9 %, pruned 18.2 %):
refitting the 18 downstream layers gives 64.9 %, the 12 whose input lost channels 63.3 %; ridge λ =
0, 1e-4, 1e-3, 1e-2, 1e-1 give 64.9, 64.9, 64.9, 65.1, 63.2 %, and with only 64 calibration images
55.8, -, 56.5, 58.5, 57.8 % (default 1e-2); 16, 64, 256 positions per image give 64.3, 64.9, 64.9 %
(default 64: the Gram matrices cost a quarter of 256's for the same result). Re-estimating the BNs
first (``recalibrate_bn``) changes nothing here (64.6 %), since the targets are taken after the BN;
re-estimating them afterwards keeps the accuracy but lowers top-1 agreement with the original
(62.9 % instead of 70.1 %): the statistics then follow the calibration images, not the original.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from onnxprune.core.errors import InputError
from onnxprune.core.graph import Skip, constant_value, consumers
from onnxprune.core.linear import LinearOp, as_linear, batchnorm_affine
from onnxprune.measure import activations
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "reconstruct"
DEFAULT_RIDGE = 1e-2
DEFAULT_POSITIONS = 64
SEED = 0


@dataclass
class _Layer:
    """A layer to refit: its node, the original tensor its output must match, and which channels of it."""

    node: gs.Node
    target: str
    rows: np.ndarray
    bias: bool
    scale: np.ndarray | None = None  # the pruned graph's BN after the layer, BN(y) = scale y + shift:
    shift: np.ndarray | None = None  # the target is BN_original(y) mapped back through its inverse

    def adjust(self, target: np.ndarray) -> np.ndarray:
        """The kept channels of the original's output, as the layer must write them (``[R, outputs]``)."""
        target = target[:, self.rows]
        if self.scale is None or self.shift is None:
            return target
        live = np.abs(self.scale) > 1e-12  # a zero BN scale ignores the layer: fit 0
        return np.divide(target - self.shift, self.scale, out=np.zeros(target.shape), where=live)


class NormalEquations:
    """Σ aᵀa, Σ aᵀy and Σ y² over the rows a = [x, 1] of a regression, in float64."""

    def __init__(self, unknowns: int, outputs: int, bias: bool) -> None:
        self.unknowns, self.bias = unknowns, bias
        size = unknowns + int(bias)
        self.gram, self.cross = np.zeros((size, size)), np.zeros((size, outputs))
        self.energy, self.rows = np.zeros(outputs), 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        a, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        u = self.unknowns
        self.gram[:u, :u] += a.T @ a
        self.cross[:u] += a.T @ y
        if self.bias:  # the column of ones, without materialising it
            sums = a.sum(axis=0)
            self.gram[:u, u] += sums
            self.gram[u, :u] += sums
            self.gram[u, u] += len(a)
            self.cross[u] += y.sum(axis=0)
        self.energy += np.einsum("ro,ro->o", y, y)
        self.rows += len(a)

    def solve(self, ridge: float) -> np.ndarray:
        """The ridge solution ``[unknowns (+1 bias), outputs]``; least norm when the system is singular."""
        penalty = np.ones(len(self.gram))
        if self.bias:
            penalty[-1] = 0.0
        scale = float(np.trace(self.gram[: self.unknowns, : self.unknowns])) / max(self.unknowns, 1)
        system = self.gram + ridge * scale * np.diag(penalty)
        try:
            return scipy.linalg.solve(system, self.cross, assume_a="pos")
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            return scipy.linalg.lstsq(system, self.cross)[0]

    def relative_error(self, solution: np.ndarray) -> float:
        """sqrt(Σ ||a w − y||² / Σ ||y||²) from the accumulated sums alone."""
        residual = (np.einsum("io,io->", solution, self.gram @ solution)  # one BLAS product: a 3-operand
                    - 2 * np.einsum("io,io->", solution, self.cross) + self.energy.sum())  # einsum loops in C
        return float(np.sqrt(max(residual, 0.0) / max(self.energy.sum(), 1e-30)))


def run(
    graph: gs.Graph,
    original: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    kept: Mapping[str, np.ndarray] | None = None,
    *,
    ridge: float = DEFAULT_RIDGE,
    positions: int = DEFAULT_POSITIONS,
    progress: bool = False,
) -> PassReport:
    """Refit, stage by stage, every refittable layer of the pruned ``graph`` downstream of a pruned tensor.

    ``original`` is the unpruned model with the same tensor names; ``kept`` maps each pruned
    activation to the indices of its channel axis that survived (``surgery.kept_channels``); a
    tensor not in it kept every channel. ``graph`` is changed in place (weights and biases only)
    and must be cleaned, sorted and shape-inferred. Raises InputError when ``feeds`` is empty.
    """
    if not feeds:
        raise InputError("least-squares reconstruction needs calibration data; no feeds given")
    kept = kept or {}
    report = PassReport(NAME)
    layers = _select(graph.toposort(), original, kept, report)
    rng = np.random.default_rng(SEED)
    by_node = {id(layer.node): layer for layer in layers}
    nodes = [layer.node for layer in layers]
    stages = [[by_node[id(node)] for node in stage] for stage in activations.stages(graph, nodes)]
    sweep = _Sweep(graph, original, feeds)
    for index, stage in enumerate(tqdm(stages, desc=NAME, unit="stage", leave=False,
                                       disable=None if progress else True)):
        systems = sweep.accumulate(stage, stages[index + 1:], positions, rng)
        report.rewrites.extend(_refit(graph, layer, systems[layer.node.name], ridge) for layer in stage)
    log.info("%s: %d layer(s) refitted in %d stage(s), %d skipped", NAME, len(layers), len(stages),
             len(report.skipped))
    return report


def _select(graph: gs.Graph, original: onnx.ModelProto, kept: Mapping[str, np.ndarray],
            report: PassReport) -> list[_Layer]:
    """The refittable linear layers whose input depends on a pruned tensor; the others' reasons into ``report``."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for proto in original.graph.node:
        for name in proto.input:
            readers.setdefault(name, []).append(proto)
    produced = {name for proto in original.graph.node for name in proto.output}
    changed = set(kept)
    layers = []
    for node in graph.nodes:
        if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.inputs[0].name in changed:
            try:
                layers.append(_layer(node, readers, produced, kept))
            except Skip as reason:
                report.skipped.append(f"{node.op} '{node.name}': {reason}")
        if any(tensor.name in changed for tensor in node.inputs):
            changed.update(tensor.name for tensor in node.outputs)
    return layers


def _layer(node: gs.Node, readers: Mapping[str, list[onnx.NodeProto]], produced: set[str],
           kept: Mapping[str, np.ndarray]) -> _Layer:
    op = as_linear(node)
    if op.kind == "ConvTranspose":
        raise Skip("ConvTranspose is not refitted")
    if op.groups != 1:
        raise Skip(f"grouped convolution (group={op.groups}): each group would need its own regression")
    output = node.outputs[0]
    rows = np.asarray(kept.get(output.name, np.arange(op.out_channels)), dtype=np.int64)
    if len(rows) != op.out_channels:
        raise Skip(f"{len(rows)} kept output channels recorded for '{output.name}', but it has {op.out_channels}")
    layer = _Layer(node, output.name, rows, bias=op.kind != "MatMul")
    follower = readers.get(output.name, [])
    if len(follower) == 1 and follower[0].op_type == "BatchNormalization":
        layer.target = follower[0].output[0]  # match after the BN: the pruned graph's may be folded or re-estimated
        norms = [reader for reader in consumers(output) if reader.op == "BatchNormalization"]
        if norms:
            layer.scale, layer.shift = batchnorm_affine(norms[0])
    if layer.target not in produced:
        raise Skip(f"the original model computes no tensor '{layer.target}'")
    return layer


class _Sweep:
    """Both networks carried through the calibration set stage by stage (``activations.Frontier``)."""

    def __init__(self, graph: gs.Graph, original: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.graph, self.original = graph, original
        self.reference = gs.import_onnx(original).toposort()
        self.pruned_front, self.original_front = activations.Frontier(feeds), activations.Frontier(feeds)

    def accumulate(self, stage: Sequence[_Layer], later: Sequence[Sequence[_Layer]], positions: int,
                   rng: np.random.Generator) -> dict[str, NormalEquations]:
        """Normal equations of each layer of ``stage``: pruned inputs and original targets of the same batches.

        The pruned network keeps the cut in front of this stage (refitting it changes what follows);
        the original, which never changes, the cut in front of the next stage's targets.
        """
        rest = [layer.node for layers in [stage, *later] for layer in layers]
        inputs_later = [layer.node.inputs[0].name for layers in later for layer in layers]
        keep = activations.cut(self.graph, rest, inputs_later)
        targets_later = [layer.target for layers in later for layer in layers]
        tensors = self.reference.tensors()
        ahead = activations.cut(self.reference, [tensors[name].inputs[0] for name in targets_later], targets_later)
        current = gs.export_onnx(self.graph, do_type_check=False)
        inputs = self.pruned_front.run(current, [layer.node.inputs[0].name for layer in stage], keep)
        targets = self.original_front.run(self.original, [layer.target for layer in stage], ahead)
        systems: dict[str, NormalEquations] = {}
        # strict: both iterations must run to their end, or a Frontier keeps no cut and restarts from the inputs
        for x_batch, y_batch in zip(inputs, targets, strict=True):
            for layer in stage:
                x, y = _rows(layer.node, x_batch[layer.node.inputs[0].name], y_batch[layer.target], positions, rng)
                y = layer.adjust(y)
                if layer.node.name not in systems:
                    systems[layer.node.name] = NormalEquations(x.shape[1], y.shape[1], layer.bias)
                systems[layer.node.name].add(x, y)
        return systems


def _refit(graph: gs.Graph, layer: _Layer, system: NormalEquations, ridge: float) -> str:
    op = as_linear(layer.node)
    before = system.relative_error(_flat(op, layer.bias))
    solution = system.solve(ridge)
    op.weight = solution[: system.unknowns].T.reshape(op.weight.shape)
    if layer.bias:
        op.bias = solution[-1]
    op.check_finite()
    op.commit(graph)
    after = system.relative_error(solution)
    return (f"{op.kind} '{layer.node.name}': refitted on {system.rows} rows x {system.unknowns} inputs, "
            f"relative error {before:.3g} -> {after:.3g}")


def _flat(op: LinearOp, bias: bool) -> np.ndarray:
    """The layer's current parameters as a solution matrix ``[unknowns (+1), outputs]``."""
    weight = op.weight.reshape(op.weight.shape[0], -1).T
    return np.vstack([weight, op.bias[None, :]]) if bias else weight


def _rows(node: gs.Node, x: np.ndarray, y: np.ndarray, positions: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows for one batch: inputs ``[R, unknowns]`` and targets ``[R, outputs]``.

    A Conv's rows are its im2col patches, a Gemm's its input rows, an N-D MatMul's the vectors
    along its last axis; at most ``positions`` positions per sample (per image) are drawn.
    """
    if node.op == "Conv":
        patches, target = conv_patches(node, x), np.moveaxis(y, 1, -1)  # [N, *out, C, *kernel], [N, *out, O]
        spatial = patches.shape[1 : y.ndim - 1]
    elif x.ndim > 2:
        patches, target = x, y
        spatial = x.shape[1:-1]
    else:
        return x, y
    if tuple(target.shape[1:-1]) != tuple(spatial):
        raise AssertionError(f"{node.op} '{node.name}': output positions {spatial}, original {target.shape[1:-1]}")
    picked = _sample(len(x), int(np.prod(spatial, dtype=np.int64)), positions, rng)
    index = (np.arange(len(x))[:, None], *np.unravel_index(picked, spatial))
    chosen = patches[index]
    return chosen.reshape(-1, int(np.prod(chosen.shape[2:]))), target[index].reshape(-1, target.shape[-1])


def _sample(samples: int, count: int, positions: int, rng: np.random.Generator) -> np.ndarray:
    """``[samples, min(count, positions)]`` flat position indices, each row without repetition."""
    if count <= positions:
        return np.broadcast_to(np.arange(count), (samples, count))
    return np.argsort(rng.random((samples, count)), axis=1)[:, :positions]


def conv_patches(node: gs.Node, x: np.ndarray) -> np.ndarray:
    """im2col as a strided view: ``[N, *out, C, *kernel]``, the receptive field of each output position.

    Uses the node's kernel, strides, dilations and pads (``auto_pad`` SAME_UPPER/SAME_LOWER/VALID
    resolved as onnxruntime does); the flattened ``[C, *kernel]`` axis matches a filter ``W[o]``.
    """
    weight = constant_value(node.inputs[1])
    assert weight is not None, f"Conv '{node.name}' has no constant weight"
    kernel = list(node.attrs.get("kernel_shape") or weight.shape[2:])
    dims = len(kernel)
    strides = list(node.attrs.get("strides", [1] * dims))
    dilations = list(node.attrs.get("dilations", [1] * dims))
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    pads = _pads(node, x.shape[2:], spans, strides)
    padded = np.pad(x, [(0, 0), (0, 0), *((pads[i], pads[i + dims]) for i in range(dims))])
    windows = sliding_window_view(padded, spans, axis=tuple(range(2, 2 + dims)))  # [N, C, *full, *spans]
    every = [slice(None, None, s) for s in strides] + [slice(None, None, d) for d in dilations]
    step = (slice(None), slice(None), *every)
    windows = windows[step]
    order = (0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims))
    return windows.transpose(order)


def _pads(node: gs.Node, size: Sequence[int], spans: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Explicit ``[begin..., end...]`` pads, with ``auto_pad`` resolved."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    dims = len(spans)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-n // s) - 1) * s + span - n) for n, s, span in zip(size, strides, spans)]
        small = [t // 2 for t in total]
        large = [t - h for t, h in zip(total, small)]
        return small + large if auto == "SAME_UPPER" else large + small
    if auto == "VALID":
        return [0] * (2 * dims)
    return list(node.attrs.get("pads", [0] * (2 * dims)))
