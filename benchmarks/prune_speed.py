"""Speed of the tool: seconds of each phase of pruning an ImageNet ResNet-50 and DenseNet-121.

Pruning itself (``api.prune_model``: clean-up, channel analysis, scoring, FLOPs counting,
selection, surgery, folding, export to a ModelProto) is timed per phase, loading, verification
and latency timing left out; the median of ``--runs`` runs in one process is compared with the
goal (ResNet-50 at 224x224 within 1 s, DenseNet-121 within 5 s). Each model is exported once and
cached under ``--cache``. L1 criterion, with a uniform ratio and with a FLOPs target.

    python benchmarks/prune_speed.py [--models resnet50,densenet121] [--runs 5] [--cache /tmp/onnxprune-speed]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import imagenet  # noqa: E402
from onnxprune import api  # noqa: E402
from onnxprune.channels import policy  # noqa: E402
from onnxprune.cli.report import table  # noqa: E402

GOAL_SECONDS = {"resnet50": 1.0, "densenet121": 5.0}
SETTINGS = {"ratio 0.5": policy.PolicyConfig(ratio=0.5), "FLOPs 0.5": policy.PolicyConfig(flops_target=0.5)}


def cached_model(name: str, cache: Path) -> onnx.ModelProto:
    """The exported model, from the cache when it is there (export takes longer than pruning)."""
    path = cache / f"{name}.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        imagenet.export_onnx(imagenet.build(name), name, path)
    return onnx.load(path)


def median_phases(model: onnx.ModelProto, config: policy.PolicyConfig, runs: int) -> dict[str, float]:
    """Median seconds per phase over ``runs`` prunings, and of their totals under "total"."""
    records = [api.prune_model(model, "l1", config).phases for _ in range(runs)]
    medians = {name: statistics.median(r.seconds.get(name, 0.0) for r in records) for name in records[0].seconds}
    return {**medians, "total": statistics.median(r.total for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(GOAL_SECONDS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/onnxprune-speed"))
    args = parser.parse_args()
    columns: dict[str, dict[str, float]] = {}
    goals = []
    for name in args.models.split(","):
        model = cached_model(name, args.cache)
        for setting, config in SETTINGS.items():
            column = f"{name} {setting}"
            columns[column] = median_phases(model, config, args.runs)
            goals.append(f"{column}: {columns[column]['total']:.2f} s (goal {GOAL_SECONDS.get(name, float('nan'))} s)")
    phases = list(dict.fromkeys(phase for medians in columns.values() for phase in medians))
    rows = [(phase, *(round(medians.get(phase, 0.0), 3) for medians in columns.values())) for phase in phases]
    print(f"median seconds of {args.runs} runs per phase")
    print(table(("phase", *columns), rows))
    print("\n".join(goals))


if __name__ == "__main__":
    main()
