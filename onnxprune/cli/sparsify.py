"""Command of unstructured sparsity: sparsify (magnitude pruning, dead channels cut, compact storage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxprune.api.sparsify import SparsifyOutcome, sparsify_file
from onnxprune.cli import report
from onnxprune.cli.options import common_options, data_source, emit
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.retrain.evaluate import LabelledData, available_splits, load_labelled
from onnxprune.sparsity import masks, packed, storage, thresholds


def register(commands) -> None:
    parser = commands.add_parser("sparsify", help="zero the smallest weights, cut all-zero channels, store compactly")
    parser.add_argument("input")
    parser.add_argument("output")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=float, help="fraction of each layer's weights to zero (e.g. 0.9)")
    amount.add_argument("--std-k", type=float, help="zero weights with |w| <= k * std of the layer's weights")
    parser.add_argument("--global", dest="global_scope", action="store_true",
                        help="one threshold over all pruned layers instead of one per layer")
    parser.add_argument("--storage", choices=storage.STORAGES, default=storage.DEFAULT_STORAGE,
                        help="how zeros are stored (default packed: float16 values + uint8 gaps, expanded by "
                             "onnxruntime at load; sparse-initializer: ONNX's field, onnxruntime only)")
    parser.add_argument("--values", choices=sorted(packed.VALUE_TYPES), default="float16",
                        help="packed values' type: float16 (3 bytes per nonzero), float32 (exact, 5 bytes) or int8 "
                             "(2 bytes; symmetric per tensor)")
    parser.add_argument("--min-elements", type=int, default=masks.MIN_ELEMENTS,
                        help=f"leave weight tensors smaller than this whole (default {masks.MIN_ELEMENTS})")
    parser.add_argument("--runs", type=int, default=20, help="latency runs per model (0: no timing)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    common_options(parser)
    parser.set_defaults(handler=_sparsify)


def _sparsify(args: argparse.Namespace) -> int:
    rule = thresholds.Threshold(args.sparsity, args.std_k, args.global_scope)
    shapes = data.parse_input_shapes(args.input_shape)
    outcome = sparsify_file(
        args.input, args.output, rule, args.storage, args.values, args.min_elements, shapes, data_source(args),
        _labelled(args), args.runs, args.threads,
    )
    emit(args, outcome.to_dict(), lambda: _text(outcome))
    return 0


def _labelled(args: argparse.Namespace) -> LabelledData | None:
    """The --data file's test split, when it has labels: accuracy before and after."""
    if not args.data or Path(args.data).suffix != ".npz" or "test" not in available_splits(args.data):
        return None
    return load_labelled(args.data, model_io.load(args.input), "test", args.mean, args.std)


def _text(outcome: SparsifyOutcome) -> str:
    cost, result = outcome.cost, outcome.sparsified
    zeroed = sum(result.zeroed.values())
    before, after = outcome.counts_before, result.counts
    rows_before = {"parameters": before.total, "nonzero parameters": before.nonzero,
                   "file size (bytes)": cost.before.stats.size_bytes, "latency median (ms)": cost.before.median_ms,
                   "session creation (ms)": 1e3 * outcome.session_seconds[0]}
    rows_after = {"parameters": after.total, "nonzero parameters": after.nonzero,
                  "file size (bytes)": cost.after.stats.size_bytes, "latency median (ms)": cost.after.median_ms,
                  "session creation (ms)": 1e3 * outcome.session_seconds[1]}
    if outcome.accuracy is not None:
        rows_before["top-1 (%)"], rows_after["top-1 (%)"] = (100 * a.top1 for a in outcome.accuracy)
    agreement = "-" if outcome.fidelity.top1_agreement is None else f"{100 * outcome.fidelity.top1_agreement:.1f} %"
    return "\n".join([
        f"zeroed {zeroed} weights in {len(result.zeroed)} tensors; removed all-zero channels in "
        f"{result.removed_channels} groups; stored {result.storage}",
        "",
        report.before_after(rows_before, rows_after),
        "",
        f"fidelity on {cost.inputs.source}: cosine {outcome.fidelity.cosine:.4f}, top-1 agreement {agreement}",
        f"wrote {cost.destination}",
    ])
