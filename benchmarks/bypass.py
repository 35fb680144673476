"""Layer pruning versus channel pruning at the same FLOPs: which buys more latency per FLOP (seed 001's claim).

For each model and fraction f of its residual units: bypass round(f * units) units, the lowest by
the data-free ``bn`` score, then fold (``api.bypass_model``); and prune channels to the
FLOPs that bypassing reached (``api.prune_model``, L1 criterion, global ranking, ``flops_target``
equal to the bypassed model's share of the cleaned-up model's MACs), then fold — once as is, once
keeping channel counts at multiples of 8 (onnxruntime's blocked NCHWc kernels need them; without
them a pruned depthwise network can get slower). Both are compared
with the original after the same exact passes (BN folded), so only the removal differs.

Columns: FLOPs, parameters and latency (onnxruntime CPU, 1 and 2 intra-op threads; the original
and the three results timed interleaved, the median over rounds of each one's time over the
original's in the same round) as ratios to the folded original; latency reduction per FLOP
reduction, (1 - latency ratio) / (1 - FLOPs ratio), at each thread count; and, for ResNet-56, top-1
on the 1000 shipped CIFAR-10 test images with no fine-tuning (the original scores it too).

    python benchmarks/bypass.py [--models resnet56,mobilenetv2] [--fractions 0.1,0.2,0.3] [--runs 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.architectures import (
    _randomize_norms,
    conv_bn,
    export,
    inverted_residual,
    pool_head,
)
from models.reference import preprocess
from onnxprune import api
from onnxprune.channels import policy
from onnxprune.cli.report import table
from onnxprune.core import data
from onnxprune.layers.units import model_macs
from onnxprune.measure import stats, verify
from onnxprune.passes import pipeline

ROOT = Path(__file__).resolve().parents[1]
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # (expansion t, width c, repeats n, first stride s), Sandler et al. 2018


def mobilenet_v2(width: float = 1.0) -> nn.Sequential:
    """MobileNetV2 at ImageNet depth (17 inverted residuals, 10 of them residual units), 1000 classes."""
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for expansion, channels, repeats, stride in MOBILENET_V2:
        cout = int(channels * width)
        for index in range(repeats):
            layers.append(inverted_residual(cin, cin * expansion, cout, 3, stride if index == 0 else 1, nn.ReLU6))
            cin = cout
    head = pool_head(1280)
    head[-1] = nn.Linear(1280, 1000)
    return nn.Sequential(*layers, conv_bn(cin, 1280, 1, act=nn.ReLU6), head)


def load(name: str, resolution: int) -> onnx.ModelProto:
    if name == "resnet56":
        return onnx.load(ROOT / "models" / "resnet56_cifar10.onnx")
    torch.manual_seed(0)
    net = mobilenet_v2()
    with torch.no_grad():
        _randomize_norms(net, torch.Generator().manual_seed(0))
    return export(net.eval(), (1, 3, resolution, resolution))


def cifar_top1(model: onnx.ModelProto) -> float:
    with np.load(ROOT / "models" / "data" / "cifar10_test1000.npz") as archive:
        images, labels = preprocess(archive["x_test"], "cifar10"), archive["y_test"]
    logits = verify.session(model).run(None, {"input": images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def rows_for(name: str, model: onnx.ModelProto, fractions: list[float], runs: int) -> list[tuple]:
    shapes = data.resolve_input_shapes(model)
    feed = data.random_feeds(model, shapes)[0]
    baseline = pipeline.optimize(model).model
    base = stats.model_stats(baseline, shapes)
    graph, units, _ = api.detect(model)
    prepared_macs = model_macs(graph)
    accuracy = cifar_top1 if name == "resnet56" else None
    rows = [(name, "original (folded)", 0.0, 1.0, 1.0, 1.0, 1.0, "-", "-", _top1(accuracy, baseline))]
    for fraction in fractions:
        count = max(1, round(fraction * len(units)))
        bypassed = api.bypass_model(model, api.Selection(count=count), score="bn")
        target = 1 - sum(block.macs for block in bypassed.removed) / prepared_macs
        methods = {f"bypass {count} unit{'s' if count > 1 else ''}": bypassed.model}
        for round_to in (1, 8):
            config = policy.PolicyConfig(flops_target=target, global_ranking=True, round_to=round_to)
            methods["channels" + (f" (round to {round_to})" if round_to > 1 else "")] = api.prune_model(
                model, "l1", config).model
        timings = [paired_ratios([baseline, *methods.values()], feed, runs, threads) for threads in (1, 2)]
        for index, (method, result) in enumerate(methods.items(), 1):
            counted = stats.model_stats(result, shapes)
            flops = counted.flops / base.flops
            lat = [float(ratios[index]) for ratios in timings]
            rows.append((name, method, fraction, round(flops, 3), round(counted.params / base.params, 3),
                         round(lat[0], 3), round(lat[1], 3), _per_flop(lat[0], flops), _per_flop(lat[1], flops),
                         _top1(accuracy, result)))
        print(f"done {name} {fraction}", file=sys.stderr)
    return rows


def paired_ratios(models: list[onnx.ModelProto], feed, runs: int, threads: int, warmup: int = 5) -> np.ndarray:
    """Median over interleaved rounds of each model's time over the first model's time in that round.

    Rounds rotate the order; a ratio taken within one round cancels the machine's drift and load,
    which medians of separate series do not when other processes share the cores.
    """
    sessions = [verify.session(model, threads=threads) for model in models]
    for _ in range(warmup):
        for sess in sessions:
            sess.run(None, feed)
    times = np.zeros((runs, len(sessions)))
    for round_ in range(runs):
        for index in np.roll(np.arange(len(sessions)), round_):
            start = time.perf_counter()
            sessions[index].run(None, feed)
            times[round_, index] = time.perf_counter() - start
    return np.median(times / times[:, :1], axis=0)


def _per_flop(latency_ratio: float, flops_ratio: float) -> str:
    return f"{(1 - latency_ratio) / (1 - flops_ratio):.2f}" if flops_ratio < 1 else "-"


def _top1(accuracy, model: onnx.ModelProto) -> str:
    return "-" if accuracy is None else f"{100 * accuracy(model):.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,mobilenetv2")
    parser.add_argument("--fractions", default="0.1,0.2,0.3")
    parser.add_argument("--resolution", type=int, default=224, help="MobileNetV2 input size")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = []
    for name in args.models.split(","):
        rows.extend(rows_for(name, load(name, args.resolution), fractions, args.runs))
    headers = ("model", "method", "fraction", "FLOPs", "params", "latency 1 thr", "latency 2 thr",
               "lat/FLOP 1 thr", "lat/FLOP 2 thr", "top-1 (no FT)")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
