"""Importance of layer-pruning units: one score per block, higher = more important.

Scores (``SCORES``; :func:`score_blocks` dispatches by name):

- ``sparsity`` (joint layer/channel pruning (CN patent, Nanjing Univ. 2021), data-free): for every
  BatchNormalization of the body, δ is the adaptive histogram threshold (``policy.adaptive_threshold``,
  bins ``bin_width`` = 0.01 wide) over that BN's |γ|, and s = the fraction of its |γ| below δ.
  Score = 1 − mean(s) over the body's BNs. After polarised sparse training a redundant unit has
  many γ ≈ 0, hence a low score. A body without a BN is unscored (NaN).
- ``bn`` (data-free): the gain of the body's end relative to the shortcut's. The body's gain is the
  mean |γ| of its last BN (the one nearest the Add); without a BN, the mean L2 norm of the output
  filters of its last weighted layer (Conv/Gemm/MatMul), times the mean |c| of a per-channel
  constant Mul after it (a layer scale, as in ConvNeXt). The shortcut's gain is 1 for an identity
  or a parameter-free (option-A) shortcut, else the same measure on P. So identity units are
  scored in γ's own units and projection units relative to what the projection passes through.
- ``data``: the relative residual ‖F(x)‖ / ‖s‖ at the Add (s the shortcut operand), per sample,
  averaged over the calibration feeds; one onnxruntime run with every unit's Add inputs exposed.
- ``data-e2e``: the change of the model's first output when this unit alone is bypassed, on the
  feeds: ``metric`` "kl" (default; mean KL(softmax(reference) ‖ softmax(bypassed)) over the last
  axis), "top1" (1 − top-1 agreement) or "l2" (‖Δ‖ / ‖reference‖). One model run per unit.

Block scores take the graph and the units, not a channel group, so they live apart from
``onnxprune.channels.importance`` (per-channel criteria).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.channels import policy
from onnxprune.core.errors import OptionError
from onnxprune.core.graph import constant_value
from onnxprune.core.layout import weight_layout
from onnxprune.layers import surgery as bypass_blocks
from onnxprune.layers.units import WEIGHTED_OPS, Block
from onnxprune.measure import verify

log = logging.getLogger(__name__)

Feeds = Sequence[Mapping[str, np.ndarray]]
METRICS = ("kl", "top1", "l2")


def score_blocks(graph: gs.Graph, blocks: Sequence[Block], score: str = "bn", feeds: Feeds | None = None,
                 **options) -> dict[str, float]:
    """Score of every unit by name. Data scores need ``feeds``; ``options`` go to the scorer."""
    scorer = _scorer(score)
    if score in DATA_SCORES and not feeds:
        raise OptionError(f"{{}} {score} needs calibration data ({{}})", "score", "data")
    return scorer(graph, blocks, feeds=feeds, **options)


def needs_data(score: str) -> bool:
    _scorer(score)
    return score in DATA_SCORES


# --- data-free --------------------------------------------------------------------------------


def sparsity_scores(graph: gs.Graph, blocks: Sequence[Block], bin_width: float = 0.01, **_) -> dict[str, float]:
    """The joint-pruning patent's score: 1 − mean over the body's BNs of the fraction of |γ| below
    that BN's adaptive δ."""
    nodes = _nodes(graph)
    scores = {}
    for block in blocks:
        sparsities = [bn_sparsity(gamma, bin_width) for gamma in _bn_scales(nodes, block.body)]
        scores[block.name] = 1.0 - float(np.mean(sparsities)) if sparsities else math.nan
    return scores


def bn_sparsity(gamma: np.ndarray, bin_width: float = 0.01) -> float:
    """s_l = #(|γ| < δ_l) / c_l with δ_l the adaptive histogram threshold of this layer's |γ|."""
    magnitude = np.abs(np.asarray(gamma, dtype=np.float64)).reshape(-1)
    delta = policy.adaptive_threshold(magnitude, bin_width)
    return float(np.mean(magnitude < delta - policy.EPSILON)) if magnitude.size else 0.0


def bn_scores(graph: gs.Graph, blocks: Sequence[Block], **_) -> dict[str, float]:
    """The body's end gain over the shortcut's (see the module docstring)."""
    nodes = _nodes(graph)
    scores = {}
    for block in blocks:
        body = _gain(nodes, block.body)
        shortcut = _gain(nodes, block.projection) if block.projection else 1.0
        if body is None:
            scores[block.name] = math.nan
        else:
            scores[block.name] = body / shortcut if shortcut else math.inf
    return scores


def _gain(nodes: Mapping[str, gs.Node], names: Sequence[str]) -> float | None:
    """Mean |γ| of the last BN; else the last weighted layer's mean filter norm (times a layer scale)."""
    chain = [nodes[name] for name in names if name in nodes]
    gammas = [constant_value(n.inputs[1]) for n in chain if n.op == "BatchNormalization"]
    if gammas and gammas[-1] is not None:
        return float(np.abs(gammas[-1]).mean())
    weighted = [(i, rows) for i, n in enumerate(chain) if n.op in WEIGHTED_OPS and (rows := _filters(n)) is not None]
    if not weighted:
        return None if any(n.op in WEIGHTED_OPS for n in chain) else 1.0
    last, rows = weighted[-1]
    gain = float(np.linalg.norm(rows, axis=1).mean())
    for node in chain[last + 1:]:
        scale = _layer_scale(node)
        if scale is not None:
            gain *= float(np.abs(scale).mean())
    return gain


def _filters(node: gs.Node) -> np.ndarray | None:
    """One row per output channel of a weighted node's constant weight: its filter."""
    layout = weight_layout(node)
    weight = None if layout is None else constant_value(node.inputs[1])
    return None if layout is None or weight is None else layout.filter_rows(weight)


def _layer_scale(node: gs.Node) -> np.ndarray | None:
    if node.op != "Mul":
        return None
    values = [constant_value(t) for t in node.inputs]
    constants = [v for v in values if v is not None]
    return constants[0] if len(constants) == 1 and constants[0].size > 1 else None


def _bn_scales(nodes: Mapping[str, gs.Node], names: Sequence[str]) -> list[np.ndarray]:
    chain = [nodes[name] for name in names if name in nodes]
    scales = [constant_value(n.inputs[1]) for n in chain if n.op == "BatchNormalization"]
    return [gamma for gamma in scales if gamma is not None]


def _nodes(graph: gs.Graph) -> dict[str, gs.Node]:
    return {node.name: node for node in graph.nodes}


# --- data -------------------------------------------------------------------------------------


def residual_scores(graph: gs.Graph, blocks: Sequence[Block], feeds: Feeds, **_) -> dict[str, float]:
    """Mean over samples of ‖F(x)‖ / ‖s‖ at each unit's Add, from one run with the operands exposed."""
    nodes = _nodes(graph)
    probes = {block.name: _operand_names(nodes[block.add], block) for block in blocks}
    wanted = sorted({name for pair in probes.values() for name in pair})
    outputs = verify.run(_exposed(graph, wanted), feeds)
    scores = {}
    for name, (branch, shortcut) in probes.items():
        ratios = [_per_sample_ratio(out[branch], out[shortcut]) for out in outputs]
        scores[name] = float(np.concatenate(ratios).mean())
    return scores


def _operand_names(add: gs.Node, block: Block) -> tuple[str, str]:
    operands = [t.name for t in add.inputs if t.name]
    branch = next(name for name in operands if name != block.shortcut)
    return branch, block.shortcut


def _per_sample_ratio(branch: np.ndarray, shortcut: np.ndarray) -> np.ndarray:
    f = branch.reshape(len(branch), -1).astype(np.float64) if branch.ndim else branch.reshape(1, -1)
    s = shortcut.reshape(len(shortcut), -1).astype(np.float64) if shortcut.ndim else shortcut.reshape(1, -1)
    norms = np.linalg.norm(s, axis=1)
    return np.linalg.norm(f, axis=1) / np.maximum(norms, 1e-12)


def _exposed(graph: gs.Graph, names: Sequence[str]) -> onnx.ModelProto:
    """An export of ``graph`` with the named tensors added as outputs."""
    probe = graph.copy()
    tensors = probe.tensors()
    present = {t.name for t in probe.outputs}
    probe.outputs.extend(tensors[name] for name in names if name not in present)
    return gs.export_onnx(probe, do_type_check=False)


def end_to_end_scores(graph: gs.Graph, blocks: Sequence[Block], feeds: Feeds, metric: str = "kl",
                      **_) -> dict[str, float]:
    """Output change when each unit alone is bypassed (``metric``: kl, top1 or l2)."""
    if metric not in METRICS:
        raise OptionError(f"{{}} {metric!r} is unknown; known: {', '.join(METRICS)}", "metric")
    reference = verify.run(gs.export_onnx(graph, do_type_check=False), feeds)
    scores = {}
    for block in blocks:
        copy = graph.copy()
        report = bypass_blocks.run(copy, [block])
        if not report.changed:
            log.info("unit %s cannot be bypassed: %s", block.name, "; ".join(report.skipped))
            scores[block.name] = math.nan
            continue
        bypassed = verify.run(gs.export_onnx(copy, do_type_check=False), feeds)
        scores[block.name] = output_change(reference, bypassed, metric)
    return scores


def output_change(reference: Sequence[Mapping[str, np.ndarray]], candidate: Sequence[Mapping[str, np.ndarray]],
                  metric: str = "kl") -> float:
    """How far ``candidate``'s first output is from ``reference``'s over all feeds."""
    name = next(iter(reference[0]))
    ref = np.concatenate([r[name].reshape(len(r[name]), -1) for r in reference]).astype(np.float64)
    cand = np.concatenate([c[name].reshape(len(c[name]), -1) for c in candidate]).astype(np.float64)
    if metric == "top1":
        return float(1.0 - np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    if metric == "l2":
        return float(np.linalg.norm(ref - cand) / max(float(np.linalg.norm(ref)), 1e-12))
    p, log_p, log_q = _softmax(ref), _log_softmax(ref), _log_softmax(cand)
    return float(np.mean(np.sum(p * (log_p - log_q), axis=1)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(logits))


Scorer = Callable[..., dict[str, float]]

SCORERS: dict[str, Scorer] = {
    "sparsity": sparsity_scores,
    "bn": bn_scores,
    "data": residual_scores,
    "data-e2e": end_to_end_scores,
}
SCORES = tuple(SCORERS)
DATA_SCORES = ("data", "data-e2e")


def _scorer(score: str) -> Scorer:
    if score not in SCORERS:
        raise OptionError(f"{{}} {score!r} is unknown; known: {', '.join(SCORES)}", "score")
    return SCORERS[score]
