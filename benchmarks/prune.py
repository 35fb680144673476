"""Structured pruning: what it buys (params, FLOPs, onnxruntime latency) and what it costs (time).

For each architecture and ratio, prune with the L1 criterion (uniform ratio per group), then
report the ratios after/before of parameters, FLOPs and median latency at 1 and 2 threads
(interleaved runs), and the seconds pruning took. A ResNet-50 (ImageNet widths, 224x224) checks
the speed goal: the whole prune in under 5 s.

    python benchmarks/prune.py [--models resnet56_cifar10,resnet50] [--ratios 0.3,0.5,0.7] [--round-to 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.architectures import ARCHITECTURES, bottleneck, conv_bn, export, export_onnx, pool_head  # noqa: E402
from onnxprune import api  # noqa: E402
from onnxprune.channels import policy  # noqa: E402
from onnxprune.cli.report import table  # noqa: E402
from onnxprune.core import data  # noqa: E402
from onnxprune.measure import latency, stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"resnet20_cifar10", "resnet56_cifar10"}


def resnet50() -> nn.Sequential:
    """ResNet-50 at ImageNet widths (25 M parameters with a 1000-way head), built from the zoo's blocks."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(bottleneck(cin, mid, mid * 4, stride if index == 0 else 1))
            cin = mid * 4
    head = pool_head(cin)
    head[-1] = nn.Linear(cin, 1000)
    return nn.Sequential(*layers, head)


def load(name: str) -> onnx.ModelProto:
    if name in REFERENCE:
        return onnx.load(ROOT / "models" / f"{name}.onnx")
    if name == "resnet50":
        torch.manual_seed(0)
        return export(resnet50().eval(), (1, 3, 224, 224))
    return export_onnx(name)


def measure(name: str, model: onnx.ModelProto, ratio: float, round_to: int, runs: int) -> tuple:
    shapes = data.resolve_input_shapes(model)
    feed = data.random_feeds(model, shapes)[0]
    start = time.perf_counter()
    pruned = api.prune_model(model, "l1", policy.PolicyConfig(ratio=ratio, round_to=round_to)).model
    seconds = time.perf_counter() - start
    before, after = stats.model_stats(model, shapes), stats.model_stats(pruned, shapes)
    ratios = [latency.compare_latency(model, pruned, feed, runs=runs, warmup=3, threads=t)[2] for t in (1, 2)]
    return (name, ratio, f"{after.params / before.params:.3f}", f"{after.flops / before.flops:.3f}",
            f"{ratios[0]:.3f}", f"{ratios[1]:.3f}", f"{seconds:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*ARCHITECTURES, *sorted(REFERENCE), "resnet50"]))
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model = load(name)
        for ratio in (float(r) for r in args.ratios.split(",")):
            rows.append(measure(name, model, ratio, args.round_to, args.runs))
            print(f"done {name} {ratio}", file=sys.stderr)
    headers = ("model", "ratio", "params", "FLOPs", "latency 1 thr", "latency 2 thr", "prune time (s)")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
