"""Models over protobuf's 2 GB limit: does ``optimize`` / ``prune`` run on them, and at what memory?

A model above 2 GB cannot be one protobuf: its weights live in an external data file, onnx's
checker and shape inference must not be handed the whole proto, and onnxruntime must open it from
a path. Every whole-model copy on the way (a serialization, a ``CopyFrom``, an exporter's
duplicate) costs another 2 GB, so the peak resident memory of each command, divided by the
model's size, says how many copies it holds at once. The target is at most 2.5.

The model is generated in a temporary folder: a VGG-like CNN with BatchNormalization after every
convolution (so ``optimize`` folds it into the weights) and a wide two-layer classifier, float32
random weights, about 40 % of them in the convolutions and 60 % in the Gemms. It is written one
chunk of one tensor at a time into ``model.onnx.data`` (4 KiB-aligned offsets), referenced from
external-data TensorProtos, so the weights are never held in memory at all.

Each command runs as a subprocess of the CLI; its wall time and peak RSS (``wait4``'s
``ru_maxrss``: the child alone) are measured. The outputs are checked: ``OUT.onnx`` is small and
``OUT.onnx.data`` beside it holds the weights, ``OUT.onnx`` passes onnxprune's own load (a
measured row too), and optimize's output verifies against the input (``onnxprune check``).

    python benchmarks/large.py [--size-gb 2.2] [--keep] [--dir /tmp] [--simulate-limit-mb N]

Where the peaks were (2.20 GB, profiled) and what removed them: ``optimize`` in graphsurgeon's
export (TensorProtos, a GraphProto and the ModelProto at once; now ``core.model.export_graph``, one
copy) and two onnxruntime sessions at once in verification (now one after the other); ``prune`` in
channel analysis (``.values`` of a lazy weight keeps a loaded copy on the graph; shapes are now read
without it) and in L1 scoring (a float64 copy of each whole weight; now float64 row blocks).
Measured last: optimize 2.17x, prune 1.86x.

``--simulate-limit-mb`` lowers onnxprune's idea of the protobuf limit in the subprocesses, so the
large-model code paths run on a small model in seconds (onnx and onnxruntime themselves are not
fooled: only a real run above 2 GB proves the limit is handled).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxprune.cli.report import table  # noqa: E402

TARGET_RATIO = 2.5  # peak RSS / model size the large-model paths must stay under
ALIGN = 4096  # external data offsets: page-aligned, so onnxruntime may map rather than copy them
CHUNK_BYTES = 64 << 20  # bytes of one tensor generated and written at a time
SPATIAL = 16  # input height and width: three 2x2 pools leave 2x2 for the classifier
CLASSES = 10
CONV_SHARE = 0.4  # of the parameters, in the convolutions


@dataclass
class Row:
    command: str
    model_bytes: int
    seconds: float
    peak_rss: int
    returncode: int

    @property
    def ratio(self) -> float:
        return self.peak_rss / self.model_bytes


class WeightWriter:
    """Writes random tensors into one external data file and returns the TensorProtos that point at it."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.file = path.open("wb")
        self.rng = np.random.default_rng(seed)

    def close(self) -> None:
        self.file.close()

    def tensor(self, name: str, shape: Sequence[int], scale: float, shift: float = 0.0,
               uniform: bool = False) -> TensorProto:
        """``shift + scale * N(0, 1)`` (or ``U(-1, 1)``) float32, written chunk by chunk along axis 0."""
        offset = -(-self.file.tell() // ALIGN) * ALIGN
        self.file.write(b"\0" * (offset - self.file.tell()))
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        rows = shape[0] if shape else 1
        step = max(1, CHUNK_BYTES // (4 * row))
        for start in range(0, rows, step):
            count = min(step, rows - start) * row
            if uniform:
                values = self.rng.random(count, dtype=np.float32) * np.float32(2) - np.float32(1)
            else:
                values = self.rng.standard_normal(count, dtype=np.float32)
            values *= np.float32(scale)
            values += np.float32(shift)
            self.file.write(values.tobytes())
        tensor = TensorProto(name=name, dims=list(shape), data_type=TensorProto.FLOAT)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", offset), ("length", 4 * rows * row)):
            tensor.external_data.add(key=key, value=str(value))
        return tensor


def widths(size_bytes: int) -> tuple[int, int]:
    """Conv width W and classifier width H giving ``size_bytes`` of float32 weights, CONV_SHARE in the convs."""
    params = size_bytes / 4
    # convs: 3->W/4, W/4->W/2, W/2->W, W->W, all 3x3: 9 * (3W/4 + W^2/8 + W^2/2 + W^2) ~ 14.625 W^2
    conv_width = int(math.sqrt(CONV_SHARE * params / 14.625)) // 64 * 64
    conv_params = 9 * (3 * conv_width // 4 + conv_width**2 // 8 + conv_width**2 // 2 + conv_width**2)
    flat = conv_width * (SPATIAL // 8) ** 2
    # classifier: flat->H, H->H, H->classes: H^2 + (flat + classes) H = rest
    rest = max(params - conv_params, 0)
    b = flat + CLASSES
    hidden = -(-int((-b + math.sqrt(b * b + 4 * rest)) / 2) // 64) * 64  # rounded up: at least the size asked
    return max(conv_width, 64), max(hidden, 64)


def build_model(folder: Path, size_bytes: int, seed: int = 0) -> Path:
    """Write ``folder/model.onnx`` (+ ``.data``): conv-BN-ReLU stages with pools, then a Gemm classifier."""
    conv_width, hidden = widths(size_bytes)
    path = folder / "model.onnx"
    writer = WeightWriter(folder / "model.onnx.data", seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current, channels = "input", 3
    plan = [conv_width // 4, "pool", conv_width // 2, "pool", conv_width, conv_width, "pool"]
    try:
        for index, step in enumerate(plan):
            if step == "pool":
                nodes.append(helper.make_node("MaxPool", [current], [f"pool{index}"], kernel_shape=[2, 2],
                                              strides=[2, 2]))
                current = f"pool{index}"
                continue
            assert isinstance(step, int)
            name = f"conv{index}"
            inits.append(writer.tensor(f"{name}.weight", [step, channels, 3, 3], math.sqrt(2 / (9 * channels))))
            inits.append(writer.tensor(f"{name}.bias", [step], 0.01))
            inits.append(writer.tensor(f"{name}.bn.scale", [step], 0.5, 1.0, uniform=True))
            inits.append(writer.tensor(f"{name}.bn.bias", [step], 0.1))
            inits.append(writer.tensor(f"{name}.bn.mean", [step], 0.1))
            inits.append(writer.tensor(f"{name}.bn.var", [step], 0.5, 1.0, uniform=True))
            nodes += [
                helper.make_node("Conv", [current, f"{name}.weight", f"{name}.bias"], [f"{name}.out"],
                                 pads=[1, 1, 1, 1], name=name),
                helper.make_node("BatchNormalization", [f"{name}.out", *(f"{name}.bn.{p}" for p in
                                 ("scale", "bias", "mean", "var"))], [f"{name}.bn.out"], name=f"{name}.bn"),
                helper.make_node("Relu", [f"{name}.bn.out"], [f"{name}.relu"], name=f"{name}.relu"),
            ]
            current, channels = f"{name}.relu", step
        nodes.append(helper.make_node("Flatten", [current], ["flat"], axis=1))
        current, features = "flat", channels * (SPATIAL // 8) ** 2
        for index, out in enumerate((hidden, hidden, CLASSES)):
            name = f"fc{index}"
            inits.append(writer.tensor(f"{name}.weight", [out, features], math.sqrt(2 / features)))
            inits.append(writer.tensor(f"{name}.bias", [out], 0.01))
            nodes.append(helper.make_node("Gemm", [current, f"{name}.weight", f"{name}.bias"], [f"{name}.out"],
                                          transB=1, name=name))
            current, features = f"{name}.out", out
            if out != CLASSES:
                nodes.append(helper.make_node("Relu", [current], [f"{name}.relu"], name=f"{name}.relu"))
                current = f"{name}.relu"
    finally:
        writer.close()
    graph = helper.make_graph(
        nodes, "large_vgg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SPATIAL, SPATIAL])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks/large")
    model.ir_version = 8
    onnx.save_model(model, str(path))
    print(f"generated {path}: conv width {conv_width}, classifier width {hidden}, "
          f"{model_bytes(path) / 1e9:.2f} GB", flush=True)
    return path


def model_bytes(path: Path) -> int:
    """A model's size on disk: the .onnx file and its external data file."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def cli(simulate_limit: int | None) -> list[str]:
    """How to start the CLI; with a simulated limit, onnxprune's PROTOBUF_LIMIT is lowered first."""
    if simulate_limit is None:
        return [sys.executable, "-m", "onnxprune"]
    code = ("import sys; import onnxprune.core.model as m; m.PROTOBUF_LIMIT = int(sys.argv.pop(1)); "
            "from onnxprune.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, str(simulate_limit)]


def measured(label: str, command: list[str], size: int) -> Row:
    """Run ``command``; its wall time and its own peak RSS (``wait4``), echoing its output."""
    print(f"$ {label}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    row = Row(label, size, seconds, usage.ru_maxrss * 1024, process.returncode)
    print(f"  exit {row.returncode}, {seconds:.1f} s, peak RSS {row.peak_rss / 1e9:.2f} GB "
          f"({row.ratio:.2f}x the model)", flush=True)
    return row


def check_output(path: Path) -> list[str]:
    """What is wrong with an output: it must be a small .onnx with its weights in .onnx.data beside it."""
    data = path.with_name(path.name + ".data")
    if not path.exists():
        return [f"{path} missing"]
    problems = []
    if not data.exists():
        problems.append(f"{data} missing: weights not written as external data")
    elif path.stat().st_size > 64 << 20:
        problems.append(f"{path} is {path.stat().st_size} bytes: weights embedded")
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    if locations - {data.name}:
        problems.append(f"{path}: external data in {sorted(locations - {data.name})}, not only {data.name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2, help="weights to generate, in GB (1e9 bytes)")
    parser.add_argument("--keep", action="store_true", help="keep the generated model and the outputs")
    parser.add_argument("--dir", default=None, help="folder for the temporary files (default: the system's)")
    parser.add_argument("--simulate-limit-mb", type=float, default=None,
                        help="lower onnxprune's protobuf limit to this many MB (a quick run of the large paths)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limit = None if args.simulate_limit_mb is None else int(args.simulate_limit_mb * 1e6)
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-large-", dir=args.dir))
    free = shutil.disk_usage(folder).free
    if free < 3 * args.size_gb * 1e9:
        print(f"need about {3 * args.size_gb:.1f} GB free in {folder}, have {free / 1e9:.1f}", file=sys.stderr)
        shutil.rmtree(folder)
        return 2
    try:
        return run(folder, args.size_gb, limit, args.seed)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder)


def run(folder: Path, size_gb: float, limit: int | None, seed: int) -> int:
    source = build_model(folder, int(size_gb * 1e9), seed)
    size = model_bytes(source)
    base = cli(limit)
    optimized, pruned = folder / "optimized.onnx", folder / "pruned.onnx"
    loader = ("import sys; import onnxprune.core.model as m; "
              + (f"m.PROTOBUF_LIMIT = {limit}; " if limit else "") + "m.load(sys.argv[1])")
    rows = [measured("load", [sys.executable, "-c", loader, str(source)], size)]
    rows.append(measured("optimize --runs 0", [*base, "optimize", str(source), str(optimized), "--runs", "0"], size))
    problems = check_output(optimized) if rows[-1].returncode == 0 else ["optimize failed"]
    if not problems:
        rows.append(measured("load optimized", [sys.executable, "-c", loader, str(optimized)], model_bytes(optimized)))
        rows.append(measured("check input optimized", [*base, "check", str(source), str(optimized), "--samples", "2"],
                             size))
        optimized.unlink()
        optimized.with_name(optimized.name + ".data").unlink()
    rows.append(measured("prune --ratio 0.5 --runs 0",
                         [*base, "prune", str(source), str(pruned), "--ratio", "0.5", "--runs", "0"], size))
    problems += check_output(pruned) if rows[-1].returncode == 0 else ["prune failed"]
    if rows[-1].returncode == 0:
        rows.append(measured("load pruned", [sys.executable, "-c", loader, str(pruned)], model_bytes(pruned)))
    problems += [f"{row.command}: exit {row.returncode}" for row in rows if row.returncode]
    print()
    print(table(("command", "model GB", "seconds", "peak RSS GB", "RSS / model"),
                [(r.command, f"{r.model_bytes / 1e9:.2f}", f"{r.seconds:.1f}", f"{r.peak_rss / 1e9:.2f}",
                  f"{r.ratio:.2f}x") for r in rows]))
    over = [r.command for r in rows if r.ratio > TARGET_RATIO]
    print(f"\ntarget: peak RSS <= {TARGET_RATIO}x the model; over: {', '.join(over) or 'none'}")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems or over else 0


if __name__ == "__main__":
    sys.exit(main())
