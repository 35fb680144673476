"""onnxprune against Torch-Pruning (and onnxsim's chain pruning): same models, same L1 ratio, one process.

For each model: Torch-Pruning 1.6.1 prunes the torch model (MetaPruner, MagnitudeImportance(p=1),
pruning_ratio 0.5 per group, the classifier ignored), which is then exported; onnxprune prunes
the exported unpruned ONNX (``prune_model(model, "l1", PolicyConfig(ratio=0.5))``, every other
option at its default); onnxsim 0.8.1's ``apply_structured_pruning(sparsity=0.5, "l1")`` prunes
the BN-folded export where its chain matcher applies. Reported: MACs and parameters (counted
after folding BN, so unfolded exports are not charged for it), the per-conv channel counts, and
onnxruntime latency (CPU, graph optimizations on) of all variants timed in interleaved rounds:
every round makes fresh sessions and runs them in a random order, the table gives the median
over rounds of each round's median, and the spread (max/min over rounds). "Realized" is
(MACs after / before) / (latency after / before): 1.0 means latency fell as much as MACs did.
The ``onnxprune-latency`` tool prunes to ``--latency-target``, by default the latency ratio
Torch-Pruning's model measures (3 interleaved rounds at 1 thread), with the policy's defaults
(the layer table's proposal checked on onnxruntime and corrected, up to 3 trials), and is
compared with it: at most as slow while keeping at least as many parameters is "met". Fidelity cannot be compared on
this zoo: its weights are random, and every tool's 50 % pruning leaves outputs uncorrelated with
the original's (centred output cosine about 0 for all of them, one trial), so only the trained
CIFAR ResNet-56 could tell, and Torch-Pruning fails on it.

Same semantics, matched as follows. onnxprune's ``--ratio r`` removes floor(r * n) of the n
prunable channels of every coupled group (a residual stage, a concat's producers, a depthwise
conv with its input), the lowest-scored first; Torch-Pruning with ``global_pruning=False`` also
prunes each dependency group by its own ranking and removes n - floor(n * (1 - r)) = ceil(r * n)
channels (at r = 0.5 the counts differ by one channel for odd n). Both score a channel by the L1
norms of the group's filters; Torch-Pruning also adds the consumers' input columns and the BN
scales (its group L1), which changes which channels go, not how many. What differs is the
rounding: onnxprune by default keeps multiples of 8 (of a smaller power of two in groups under 64
channels, a step at most 1/8 of the group) and then picks the fastest count near that from its
layer latency table; Torch-Pruning keeps exact counts.

    python benchmarks/vs_torch_pruning.py [--models densenet121,resnet56] [--rounds 5] [--threads 1,0]
    python benchmarks/vs_torch_pruning.py --per-layer densenet121

``--threads 0`` means onnxruntime's default (all cores). Exports are cached in /tmp/vs_torch_pruning;
the onnxprune and onnxsim variants are rebuilt on every run (the policy's defaults may change).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import imagenet  # noqa: E402
from models.architectures import _randomize_norms, export  # noqa: E402
from models.reference import CifarResNet  # noqa: E402
from onnxprune import api  # noqa: E402
from onnxprune.channels import policy  # noqa: E402
from onnxprune.core import model as model_io  # noqa: E402
from onnxprune.measure import latency, stats  # noqa: E402
from onnxprune.passes import pipeline  # noqa: E402

CACHE = Path("/tmp/vs_torch_pruning")
RATIO = 0.5
CIFAR_WEIGHTS = ROOT.parent / "shared" / "models" / "resnet56_cifar10.npz"
MODELS = [*imagenet.IMAGENET_MODELS, "resnet56"]
ORIGINAL, TORCH_PRUNING, ONNXPRUNE, ONNXSIM = "original", "torch-pruning", "onnxprune", "onnxsim"
ONNXPRUNE_LATENCY = "onnxprune-latency"  # prune_model(model, "l1", PolicyConfig(latency_target=...))
LATENCY_TARGET = 0.4  # the equal-latency arm's target where Torch-Pruning has no model to match
CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv"}


# --- building the variants -------------------------------------------------------------------


def torch_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The torch model and its input shape: an ImageNet builder, or ResNet-56 with the shipped CIFAR weights."""
    if name != "resnet56":
        return imagenet.build(name), input_shape(name)
    torch.manual_seed(0)
    model = CifarResNet(56)
    if CIFAR_WEIGHTS.exists():
        with np.load(CIFAR_WEIGHTS) as z:
            model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files}, strict=True)
    else:
        with torch.no_grad():
            _randomize_norms(model, torch.Generator().manual_seed(0))
    return model.eval(), input_shape(name)


def input_shape(name: str) -> tuple[int, ...]:
    return (1, 3, 32, 32) if name == "resnet56" else imagenet.input_shape(name)


def torch_pruning(model: nn.Module, shape: Sequence[int]) -> nn.Module:
    """Prune a copy with Torch-Pruning: group L1 magnitude, ratio 0.5 per group, classifier kept whole."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    classifier = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(pruned, torch.randn(tuple(shape)), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=[classifier])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    return pruned.eval()


@dataclass
class Variant:
    """One model file to compare, or why it could not be made; ``seconds`` is the pruning time."""

    label: str
    path: Path | None
    seconds: float = 0.0
    error: str = ""


def _cached_export(path: Path, make: Callable[[], nn.Module], shape: Sequence[int]) -> Variant:
    """Export ``make()`` to ``path`` unless cached; a failure is cached too (``.error`` beside it)."""
    failure = path.with_suffix(".error")
    if failure.exists():
        return Variant(path.stem, None, error=failure.read_text())
    if not path.exists():
        start = time.perf_counter()
        step = "pruning"
        try:
            model = make()
            path.with_suffix(".seconds").write_text(f"{time.perf_counter() - start:.2f}")
            step = "export of the pruned model"
            export(model, shape, path, opset=imagenet.OPSET)
        except Exception as exc:  # a pruner's own bug is a result here, not a crash
            failure.write_text(f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0]}"[:200])
            return Variant(path.stem, None, error=failure.read_text())
    seconds_file = path.with_suffix(".seconds")
    return Variant(path.stem, path, float(seconds_file.read_text()) if seconds_file.exists() else 0.0)


def _onnx_pruned(path: Path, prune: Callable[[onnx.ModelProto], onnx.ModelProto], label: str) -> Variant:
    """Run an ONNX-to-ONNX pruner on the cached original, timed; its failure is a row, not a crash."""
    source = onnx.load(path.with_name(path.name.split(".")[0] + ".onnx"))
    start = time.perf_counter()
    try:
        pruned = prune(source)
    except Exception as exc:  # same: another tool's limitation is a finding
        return Variant(label, None, error=f"{type(exc).__name__}: {exc}"[:200])
    seconds = time.perf_counter() - start
    model_io.save(pruned, path)
    return Variant(label, path, seconds)


def _onnxprune(model: onnx.ModelProto) -> onnx.ModelProto:
    return api.prune_model(model, "l1", policy.PolicyConfig(ratio=RATIO)).model


def _onnxprune_latency(model: onnx.ModelProto, target: float) -> onnx.ModelProto:
    return api.prune_model(model, "l1", policy.PolicyConfig(latency_target=target)).model


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim's chain pruning wants BN already fused: fold with onnxprune's exact passes first."""
    from onnxsim import pruning

    return pruning.apply_structured_pruning(pipeline.optimize(model).model, sparsity=RATIO, importance_norm="l1")


def variants(name: str, tools: Sequence[str], latency_target: float | None = None) -> list[Variant]:
    """Original, then the pruned variants named in ``tools``; exports are cached in CACHE.

    The equal-latency arm prunes to ``latency_target``, or by default to the latency ratio
    Torch-Pruning's model measures (``tools`` must then name Torch-Pruning before it).
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    model, shape = torch_model(name)
    found = [_cached_export(CACHE / f"{name}.onnx", lambda: model, shape)]
    found[0].label = ORIGINAL

    def equal_latency() -> Variant:
        reference = next((v for v in found if v.label == TORCH_PRUNING), Variant("", None))
        target = latency_target or matched_target(found[0], reference, shape)
        return _onnx_pruned(CACHE / f"{name}.{ONNXPRUNE_LATENCY}.onnx",
                            functools.partial(_onnxprune_latency, target=target), ONNXPRUNE_LATENCY)

    builders = {
        TORCH_PRUNING: lambda: _cached_export(CACHE / f"{name}.tp.onnx", lambda: torch_pruning(model, shape), shape),
        ONNXPRUNE: lambda: _onnx_pruned(CACHE / f"{name}.onnxprune.onnx", _onnxprune, ONNXPRUNE),
        ONNXSIM: lambda: _onnx_pruned(CACHE / f"{name}.onnxsim.onnx", _onnxsim, ONNXSIM),
        ONNXPRUNE_LATENCY: equal_latency,
    }
    for tool in tools:
        variant = builders[tool]()
        variant.label = tool
        found.append(variant)
    return found


# --- static counts ----------------------------------------------------------------------------


@dataclass
class Counts:
    """MACs and parameters after folding BN, the op histogram, and (out channels, group width) per conv."""

    macs: int
    params: int
    ops: dict[str, int]
    convs: list[tuple[int, int]]

    def misaligned(self, block: int) -> int:
        """Convs whose output channel count is not a multiple of ``block`` (NCHWc wants 8 on AVX2, 16 on AVX-512)."""
        return sum(1 for out, _ in self.convs if out % block)


def counts(path: Path, shape: Sequence[int]) -> Counts:
    folded = pipeline.optimize(onnx.load(path)).model
    model_stats = stats.model_stats(folded, {folded.graph.input[0].name: tuple(shape)})
    inits = {t.name: t.dims for t in folded.graph.initializer}
    convs = []
    for node in folded.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            out, per_group = inits[node.input[1]][:2]
            convs.append((int(out), int(per_group)))
    return Counts(model_stats.macs, model_stats.params, model_stats.op_histogram, convs)


def matched_target(original: Variant, reference: Variant, shape: Sequence[int]) -> float:
    """The latency ratio ``reference`` (Torch-Pruning's model) measures at 1 thread: the equal-latency arm's target."""
    if original.path is None or reference.path is None:
        return LATENCY_TARGET
    first, second = interleaved([original.path, reference.path], shape, 1, 3, 5)
    return min(second.median_ms / first.median_ms, 0.95)


# --- latency -------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Median over rounds of the per-round median latency, and max/min of the round medians."""

    median_ms: float
    spread: float


def interleaved(paths: Sequence[Path], shape: Sequence[int], threads: int, rounds: int, runs: int) -> list[Timing]:
    """Time all models round by round: fresh sessions in a random order each round, runs interleaved."""
    feed = {"input": np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)}
    per_round: list[list[float]] = [[] for _ in paths]
    for index in range(rounds):
        for samples, result in zip(per_round, latency.measure_many(list(paths), feed, runs, 3, threads, seed=index)):
            samples.append(result.median_ms)
    return [Timing(statistics.median(s), max(s) / min(s)) for s in per_round]


# --- the comparison table ------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    tool: str
    macs: float = math.nan  # after / before
    params: float = math.nan
    latency: dict[int, float] = field(default_factory=dict)  # threads -> after / before
    spread: dict[int, float] = field(default_factory=dict)
    misaligned: str = ""
    seconds: float = 0.0
    error: str = ""

    def realized(self, threads: int) -> float:
        return self.macs / self.latency[threads] if threads in self.latency else math.nan


def compare(name: str, tools: Sequence[str], threads: Sequence[int], rounds: int, runs: int,
            latency_target: float | None = None) -> list[Row]:
    found = variants(name, tools, latency_target)
    shape = input_shape(name)
    ok = [v for v in found if v.path is not None]
    measured = {v.label: counts(v.path, shape) for v in ok if v.path is not None}
    base = measured[ORIGINAL]
    paths = [v.path for v in ok if v.path is not None]
    timings = {t: interleaved(paths, shape, t, rounds, runs) for t in threads}
    rows = []
    for variant in found:
        row = Row(name, variant.label, seconds=variant.seconds, error=variant.error)
        if variant.label in measured:
            c = measured[variant.label]
            row.macs, row.params = c.macs / base.macs, c.params / base.params
            row.misaligned = f"{c.misaligned(8)}/{c.misaligned(16)}/{len(c.convs)}"
            index = [v.label for v in ok].index(variant.label)
            for t, timing in timings.items():
                row.latency[t] = timing[index].median_ms / timings[t][0].median_ms
                row.spread[t] = timing[index].spread
        rows.append(row)
    return rows


def markdown(rows: Sequence[Row], threads: Sequence[int]) -> str:
    names = {t: f"{t} thr" if t else "all thr" for t in threads}
    head = ["model", "tool", "MACs", "params", *(f"latency {names[t]}" for t in threads),
            *(f"realized {names[t]}" for t in threads), "convs off 8/16/all", "prune s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if r.error:
            cells = [r.model, r.tool, f"fails: {r.error}", *[""] * (len(head) - 3)]
        elif r.tool == ORIGINAL:
            continue
        else:
            cells = [r.model, r.tool, f"{r.macs:.3f}", f"{r.params:.3f}",
                     *(f"{r.latency[t]:.3f} (×{r.spread[t]:.2f})" for t in threads),
                     *(f"{r.realized(t):.2f}" for t in threads), r.misaligned,
                     f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geomean_lines(rows: Sequence[Row], threads: Sequence[int]) -> list[str]:
    """Geometric mean of the realized speed-up per tool, over the models every tool pruned."""
    done = defaultdict(dict)
    for r in rows:
        if r.tool != ORIGINAL and not r.error:
            done[r.model][r.tool] = r
    tools = sorted({tool for by_tool in done.values() for tool in by_tool})
    lines = []
    for t in threads:
        common = [m for m, by_tool in done.items() if {TORCH_PRUNING, ONNXPRUNE} <= set(by_tool)]
        means = {tool: math.exp(statistics.fmean(math.log(done[m][tool].realized(t)) for m in common))
                 for tool in tools if all(tool in done[m] for m in common) and common}
        text = ", ".join(f"{tool} {value:.2f}" for tool, value in means.items())
        lines.append(f"realized geomean at {t or 'all'} thread(s) over {len(common)} models: {text}")
    return lines


def equal_latency_lines(rows: Sequence[Row], threads: int) -> list[str]:
    """Per model: onnxprune's latency target against Torch-Pruning's uniform ratio, latency and parameters kept."""
    by_model: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if not r.error:
            by_model[r.model][r.tool] = r
    lines = []
    for model, tools in by_model.items():
        ours, theirs = tools.get(ONNXPRUNE_LATENCY), tools.get(TORCH_PRUNING)
        if ours is None or theirs is None or threads not in ours.latency:
            continue
        faster = ours.latency[threads] <= theirs.latency[threads]
        fuller = ours.params >= theirs.params
        lines.append(f"{model}: aimed at Torch-Pruning's latency ({theirs.latency[threads]:.3f}), onnxprune "
                     f"measures {ours.latency[threads]:.3f} and keeps {ours.params:.3f} of the parameters "
                     f"(Torch-Pruning {theirs.params:.3f}): {'met' if faster and fuller else 'NOT met'}")
    return lines


# --- per-layer profiling ---------------------------------------------------------------------------


@dataclass
class Node:
    """One node of onnxruntime's optimized graph: op, output shape, MACs its kernel does, mean ms per run."""

    op: str
    shape: list[int]
    macs: int
    ms: float = 0.0


def _kernel_macs(op: str, inputs: list[list[int]], output: list[int]) -> int:
    """MACs from the shapes onnxruntime reports (for NCHWc that includes channels padded to the block)."""
    if op in CONV_OPS and len(inputs) > 1:
        return math.prod(output) * math.prod(inputs[1][1:])
    if op in ("Gemm", "MatMul", "FusedMatMul") and len(inputs) > 1:
        return math.prod(output) * inputs[0][-1]
    return 0


def _shapes(entries: list[dict]) -> list[list[int]]:
    return [list(next(iter(entry.values()))) for entry in entries]


def profile(path: Path, shape: Sequence[int], runs: int, threads: int) -> tuple[dict[str, Node], dict[str, int]]:
    """Kernel time per node, averaged over ``runs`` runs after a warm-up one, and the optimized graph's ops."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(CACHE / f"{path.stem}.profile")
    options.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)}
    for _ in range(runs + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    first_run = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes: dict[str, Node] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, args = event["name"].removesuffix("_kernel_time"), event["args"]
        if name not in nodes:
            output = (_shapes(args.get("output_type_shape") or [{"": []}]) or [[]])[0]
            macs = _kernel_macs(args["op_name"], _shapes(args.get("input_type_shape", [])), output)
            nodes[name] = Node(args["op_name"], output, macs)
        if event["ts"] > first_run["ts"] + first_run["dur"]:
            nodes[name].ms += event["dur"] / 1e3 / runs
    ops: dict[str, int] = defaultdict(int)
    for node in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node:
        ops[f"{node.domain.removeprefix('com.microsoft.') + ':' if node.domain else ''}{node.op_type}"] += 1
    return nodes, dict(sorted(ops.items()))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def _op_totals(nodes: dict[str, Node]) -> dict[str, tuple[float, int]]:
    """(ms, kernel MACs) per op type, plus a "total" entry."""
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for node in nodes.values():
        for key in (node.op, "total"):
            totals[key][0] += node.ms
            totals[key][1] += node.macs
    return {op: (ms, macs) for op, (ms, macs) in totals.items()}


def by_op(profiles: dict[str, dict[str, Node]]) -> str:
    """Per op type: ms of every variant, and each pruned variant's time ratio / kernel-MACs ratio."""
    totals = {label: _op_totals(nodes) for label, nodes in profiles.items()}
    base = totals[ORIGINAL]
    pruned = [label for label in profiles if label != ORIGINAL]
    head = ["op", "ms original", *(f"ms {p}" for p in pruned), *(f"{p} time / MACs ratio" for p in pruned)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for op in sorted(set().union(*totals.values()), key=lambda op: (op == "total", -base.get(op, (0.0, 0))[0])):
        cells = [op, *(f"{totals[label].get(op, (0.0, 0))[0]:.2f}" for label in profiles)]
        for label in pruned:
            (ms, macs), (ms0, macs0) = totals[label].get(op, (0.0, 0)), base.get(op, (0.0, 0))
            cells.append(f"{_ratio(ms, ms0)} / {_ratio(macs, macs0)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_nodes(original: dict[str, Node], pruned: dict[str, Node], label: str, top: int) -> str:
    """Nodes (matched by name) whose time fell least relative to their MACs: excess = ms - ms_orig * MACs ratio."""
    rows = []
    for name, node in pruned.items():
        before = original.get(name)
        if before is None or not before.macs:
            continue
        excess = node.ms - before.ms * node.macs / before.macs
        rows.append((excess, name, node, before))
    rows.sort(key=lambda row: -row[0])
    head = ["node", "op", "shape original -> " + label, "MACs ratio", "time ratio", "excess ms"]
    lines = [f"Worst {top} nodes of {label} (excess over MAC-proportional time, summed: "
             f"{sum(r[0] for r in rows):.2f} ms over {len(rows)} matched nodes):", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for excess, name, node, before in rows[:top]:
        lines.append(f"| {name[-60:]} | {node.op} | {before.shape} -> {node.shape} | {node.macs / before.macs:.3f} | "
                     f"{_ratio(node.ms, before.ms)} | {excess:.3f} |")
    return "\n".join(lines)


def _work(node: Node) -> int:
    """What a kernel's time should scale with: its MACs, or its output elements for an op without MACs."""
    return node.macs or math.prod(node.shape)


def op_mix_estimate(original: dict[str, Node], pruned: dict[str, Node]) -> tuple[float, float]:
    """(latency ratio, realized) if every original kernel's time scaled exactly with its own work.

    What a uniform ratio can reach with proportional kernels: a depthwise conv's MACs shrink in
    proportion to its channels, a pointwise conv's with their square, so a network that spends
    more of its time than of its MACs in depthwise convs (and element-wise ops) realizes less
    than 1.0 even when every kernel is ideal. An estimate, not a bound: smaller tensors can also
    fit a cache they did not fit before. Kernels with MACs are paired in execution order when
    both graphs have as many (node names differ after another tool's folding), others by name;
    an unpaired original node keeps its time.
    """
    paired = {name: pruned.get(name) for name in original}
    heavy = [name for name, node in original.items() if node.macs]
    pruned_heavy = [node for node in pruned.values() if node.macs]
    if len(heavy) == len(pruned_heavy):
        paired.update(zip(heavy, pruned_heavy))
    before = sum(node.ms for node in original.values())
    after = sum(node.ms * (_work(other) / _work(node) if other is not None and _work(node) else 1.0)
                for node, other in ((original[name], paired[name]) for name in original))
    macs = sum(node.macs for node in pruned.values()) / sum(node.macs for node in original.values())
    return after / before, macs / (after / before)


def per_layer(name: str, runs: int, threads: int, top: int) -> str:
    found = [v for v in variants(name, [TORCH_PRUNING, ONNXPRUNE]) if v.path is not None]
    shape = input_shape(name)
    profiled = {v.label: profile(v.path, shape, runs, threads) for v in found if v.path is not None}
    profiles = {label: nodes for label, (nodes, _) in profiled.items()}
    nominal = {v.label: counts(v.path, shape) for v in found if v.path is not None}
    parts = [f"## {name}: onnxruntime profile, {threads} thread(s), mean of {runs} runs", "", by_op(profiles), ""]
    for label, c in nominal.items():
        kernel = sum(node.macs for node in profiles[label].values())
        convs = [f"{out}" for out, _ in c.convs]
        parts.append(f"- {label}: {len(profiled[label][0])} kernels; nominal MACs {c.macs / 1e6:.1f} M, kernel MACs "
                     f"{kernel / 1e6:.1f} M (x{kernel / c.macs:.3f}: NCHWc block padding); convs not a multiple of "
                     f"8: {c.misaligned(8)}, of 16: {c.misaligned(16)} of {len(c.convs)}; optimized graph ops "
                     f"{profiled[label][1]}; conv out channels {' '.join(convs)}")
    for label in profiles:
        if label != ORIGINAL:
            latency, realized = op_mix_estimate(profiles[ORIGINAL], profiles[label])
            measured = sum(n.ms for n in profiles[label].values()) / sum(n.ms for n in profiles[ORIGINAL].values())
            kernel = sum(n.macs for n in profiles[label].values()) / sum(n.macs for n in profiles[ORIGINAL].values())
            parts += ["", f"{label}: if every kernel's time scaled with its own MACs (output elements where it has "
                          f"none), latency would be {latency:.3f} of the original and realized {realized:.2f}; "
                          f"this profile measured {measured:.3f} (realized {kernel / measured:.2f}, kernel MACs)",
                      "", worst_nodes(profiles[ORIGINAL], profiles[label], label, top)]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tools", default=",".join([TORCH_PRUNING, ONNXPRUNE, ONNXSIM]))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (fresh sessions each)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model per round")
    parser.add_argument("--threads", default="1,0", help="comma-separated intra-op thread counts; 0: all cores")
    parser.add_argument("--per-layer", metavar="MODEL", help="profile one model node by node instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--latency-target", type=float,
                        help=f"of the {ONNXPRUNE_LATENCY} tool (default: Torch-Pruning's measured latency ratio)")
    parser.add_argument("--top", type=int, default=15, help="worst nodes listed by --per-layer")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.per_layer:
        print(per_layer(args.per_layer, args.runs, threads[0] or os.cpu_count() or 1, args.top))
        return
    tools = args.tools.split(",")
    rows = []
    for name in args.models.split(","):
        rows += compare(name, tools, threads, args.rounds, args.runs, args.latency_target)
        print(markdown([r for r in rows if r.model == name], threads), flush=True)
    print(markdown(rows, threads))
    print("\n".join(geomean_lines(rows, threads) + equal_latency_lines(rows, threads[0])))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
