"""Every published method as its shipped recipe, run end to end, published vs measured side by side.

One row per recipe (``onnxprune run --list``), on the network of its paper: the shipped CIFAR-10
ResNet-56 and the VGG-16-BN that ``models/train_vgg.py`` writes (a row whose model is missing says
so). Each recipe runs through the CLI exactly as a user runs it (``onnxprune run RECIPE IN OUT
--data ...``), with the training budget of this 2-core machine: every ``finetune`` /
``sparse-train`` step gets ``--epochs`` epochs (``--set``) on the first ``--train-images``
training images. The steps' own data (fidelity, calibration, gradient criteria) is 1,000 other
*training* images, so the test split is only read for the numbers in the table: top-1 before and
after on the full 10k test split of this repository's CIFAR-10 copy (JPEG-compressed: compare
the drop, not the absolute accuracy), FLOPs and parameters removed, latency ratio (onnxruntime,
1 thread, original and result interleaved), training epochs and wall time. "met" says whether the
measured drop is at most the published one and the published compression was reached.

Rows are cached in ``--out``/reproduce.json as they finish (a rerun resumes; ``--fresh`` ignores
the cache), and the table is written to ``--out``/reproduce.md with the command that made it.

    python benchmarks/reproduce.py [--rows pfec-l1-resnet56,...] [--epochs 1] [--train-images 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxprune import recipes
from onnxprune.cli import main as cli_main
from onnxprune.cli.report import table
from onnxprune.core.data import resolve_input_shapes
from onnxprune.measure.latency import compare_latency
from onnxprune.measure.stats import model_stats
from onnxprune.retrain.evaluate import evaluate, load_labelled

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10.npz"
MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"
MODELS = {"resnet56": ROOT / "models" / "resnet56_cifar10.onnx", "vgg16": ROOT / "models" / "vgg16_cifar10.onnx"}
STEP_DATA_IMAGES = 1000  # held-out training images the steps see as their x_test (fidelity, calibration)


@dataclass(frozen=True)
class Published:
    model: str
    flops_removed: float | None = None  # percent
    params_removed: float | None = None  # percent
    drop_pp: float | None = None  # top-1 lost, percentage points (negative: gained)


PUBLISHED = {
    "pfec-l1-vgg16": Published("vgg16", 34.2, 64.0, -0.15),
    "pfec-l1-resnet56": Published("resnet56", 27.6, None, -0.02),
    "slimming-vgg16": Published("vgg16", 51.0, 88.5, -0.14),
    "polarization-joint-resnet56": Published("resnet56"),
    "elasticity-vgg16": Published("vgg16", 80.2, 97.0),
    "entropy-fusion-vgg16": Published("vgg16", None, 92.74),
    "entropy-fusion-resnet56": Published("resnet56", None, 48.84),
    "gdp-vgg16": Published("vgg16", 35.3, None, 0.14),
}


@dataclass
class Row:
    recipe: str
    model: str
    status: str
    flops_removed: float | None = None
    params_removed: float | None = None
    latency_ratio: float | None = None
    top1_before: float | None = None
    top1_after: float | None = None
    epochs: int = 0
    seconds: float = 0.0

    @property
    def drop(self) -> float | None:
        if self.top1_before is None or self.top1_after is None:
            return None
        return self.top1_before - self.top1_after


def step_data(folder: Path, train_images: int) -> Path:
    """Training images for the recipe's training steps, other training images as the steps' x_test."""
    with np.load(CIFAR) as cifar:
        x, y = cifar["x_train"], cifar["y_train"]
    held_out = slice(len(x) - STEP_DATA_IMAGES, len(x))
    path = folder / "steps.npz"
    np.savez(path, x_train=x[:train_images], y_train=y[:train_images], x_test=x[held_out], y_test=y[held_out])
    return path


def training_overrides(recipe: recipes.Recipe, epochs: int) -> list[str]:
    return [f"{i}.epochs={epochs}" for i, step in enumerate(recipe.steps, 1) if step.command in recipes.TRAINING]


def run_row(name: str, data: Path, epochs: int, folder: Path) -> Row:
    published = PUBLISHED[name]
    source = MODELS[published.model]
    if not source.exists():
        return Row(name, published.model, f"skipped: {source.relative_to(ROOT)} not trained yet")
    recipe = recipes.load(name)
    overrides = training_overrides(recipe, epochs)
    output = folder / f"{name}.onnx"
    argv = ["run", name, str(source), str(output), "--data", str(data), "--mean", MEAN, "--std", STD, "-q"]
    start = time.perf_counter()
    code = cli_main([*argv, *(f"--set={setting}" for setting in overrides)])
    seconds = time.perf_counter() - start
    if code:
        return Row(name, published.model, f"failed (exit {code})", seconds=seconds)
    original, result = onnx.load(source), onnx.load(output)
    before, after = (model_stats(model, resolve_input_shapes(model, None)) for model in (original, result))
    test = load_labelled(CIFAR, original, "test", [float(v) for v in MEAN.split(",")],
                         [float(v) for v in STD.split(",")])
    feeds = {original.graph.input[0].name: test.inputs(slice(0, 1))}
    _, _, ratio = compare_latency(original, result, feeds, runs=50, threads=1)
    return Row(name, published.model, "done", 100 * (1 - after.flops / before.flops),
               100 * (1 - after.params / before.params), ratio, 100 * evaluate(original, test).top1,
               100 * evaluate(result, test).top1, epochs * len(overrides), seconds)


def met(row: Row, published: Published) -> str:
    if row.drop is None:
        return "-"
    if published.drop_pp is None and published.flops_removed is None and published.params_removed is None:
        return "- (no published figures)"
    checks = [published.drop_pp is None or row.drop <= published.drop_pp,
              published.flops_removed is None or (row.flops_removed or 0) >= published.flops_removed - 0.5,
              published.params_removed is None or (row.params_removed or 0) >= published.params_removed - 0.5]
    verdict = "yes" if all(checks) else "no"
    return verdict if published.drop_pp is not None else f"{verdict} (size only: no published drop)"


def render(rows: list[Row]) -> str:
    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = []
    for row in rows:
        published = PUBLISHED[row.recipe]
        lines.append([row.recipe, row.model, f"{number(published.flops_removed)} / {number(row.flops_removed)}",
                      f"{number(published.params_removed)} / {number(row.params_removed)}",
                      number(row.latency_ratio, 2), number(row.top1_before, 2), number(row.top1_after, 2),
                      f"{number(published.drop_pp, 2)} / {number(row.drop, 2)}", row.epochs, f"{row.seconds:.0f}",
                      met(row, published), row.status])
    return table(["recipe", "model", "FLOPs -% pub/ours", "params -% pub/ours", "latency after/before", "top-1 before",
                  "top-1 after", "drop pp pub/ours", "epochs", "s", "met", "status"], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(PUBLISHED), help="comma-separated recipe names")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every training step")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_path = args.out / "reproduce.json"
    settings = f"epochs={args.epochs},train_images={args.train_images}"
    cache = {} if args.fresh or not cache_path.exists() else json.loads(cache_path.read_text())
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = step_data(Path(work), args.train_images)
        for name in args.rows.split(","):
            key = f"{name}:{settings}"
            if key not in cache or cache[key]["status"] != "done":
                cache[key] = asdict(run_row(name, data, args.epochs, Path(work)))
                cache_path.write_text(json.dumps(cache, indent=2) + "\n")
            rows.append(Row(**cache[key]))
    text = render(rows)
    print(text)
    command = "python benchmarks/reproduce.py " + " ".join(sys.argv[1:])
    (args.out / "reproduce.md").write_text(f"`{command.strip()}` ({settings})\n\n```\n{text}\n```\n")


if __name__ == "__main__":
    main()
