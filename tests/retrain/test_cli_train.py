"""evaluate / finetune / sparse-train from the command line: output format, exit codes, and one
clear line for every kind of bad data file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import cli
from onnxprune.cli import train as train_commands
from tests.retrain import conv_net, stripes

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET = MODELS / "lenet5_mnist.onnx"
MNIST = MODELS / "data" / "mnist_test1000.npz"
NORMALISE = ["--mean", "0.1307", "--std", "0.3081"]


@pytest.fixture(autouse=True)
def train_commands_registered(monkeypatch):
    """Until the group is listed in COMMAND_GROUPS, add it for these tests."""
    if train_commands not in cli.COMMAND_GROUPS:
        monkeypatch.setattr(cli, "COMMAND_GROUPS", (*cli.COMMAND_GROUPS, train_commands))


def run(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


REFERENCE = {
    "lenet5": (LENET, MNIST, NORMALISE, 95),
    "resnet20": (MODELS / "resnet20_cifar10.onnx", MODELS / "data" / "cifar10_test1000.npz",
                 ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"], 70),  # NHWC uint8
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_evaluate_prints_top1_and_top5(name, capsys):
    model, data, normalise, floor = REFERENCE[name]
    assert run("evaluate", model, "--data", data, *normalise, "--limit", "200") == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"top-1 \d+\.\d\d %  top-5 \d+\.\d\d %  \(200 images\)", line), line
    assert float(line.split()[1]) > floor


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def mnist_arrays(count: int = 32) -> dict[str, np.ndarray]:
    with np.load(MNIST) as data:
        return {"x_test": data["x_test"][:count], "y_test": data["y_test"][:count]}


BAD_FILES = {
    "missing keys": (lambda a: {"images": a["x_test"], "labels": a["y_test"]},
                     r"no 'x_test' or 'y_test' array \(it has: images, labels\)"),
    "wrong image shape": (lambda a: {"x_test": a["x_test"][:, :20], "y_test": a["y_test"]},
                          r"'x_test' has shape \[32, 20, 28\]"),
    "label out of range": (lambda a: {"x_test": a["x_test"], "y_test": np.full(32, 12)},
                           r"label 12 is out of range \(the model has 10 classes"),
    "negative label": (lambda a: {"x_test": a["x_test"], "y_test": -np.ones(32, np.int64)},
                       r"label -1 is out of range"),
    "label count": (lambda a: {"x_test": a["x_test"], "y_test": a["y_test"][:5]},
                    r"'y_test' has shape \[5\]; expected \[32\]"),
    "float labels": (lambda a: {"x_test": a["x_test"], "y_test": a["y_test"] + 0.5}, r"non-integer labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_files_exit_2_with_a_clear_message(case, tmp_path, capsys):
    make, message = BAD_FILES[case]
    path = save_npz(tmp_path / "bad.npz", **make(mnist_arrays()))
    assert run("evaluate", LENET, "--data", path) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxprune: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_unreadable_data_files_exit_2(tmp_path, capsys):
    assert run("evaluate", LENET, "--data", tmp_path / "missing.npz") == 2
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert run("evaluate", LENET, "--data", tmp_path / "junk.npz") == 2
    assert run("evaluate", LENET, "--data", MNIST, "--mean", "1,2") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "not found" in errors[0] and "cannot read data file" in errors[1] and "--mean has 2 values" in errors[2]


def training_file(tmp_path: Path, count: int = 48) -> Path:
    x, y = stripes(count, seed=0)
    xt, yt = stripes(24, seed=1)
    return save_npz(tmp_path / "stripes.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)


def test_finetune_runs_one_tiny_epoch(tmp_path, capsys):
    model_path, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_net(), model_path)
    before = model_path.read_bytes()
    report = tmp_path / "report.json"
    code = run("finetune", model_path, out, "--data", training_file(tmp_path), "--epochs", "1",
               "--batch-size", "16", "--lr", "0.05", "--report", report, "--checkpoint", tmp_path / "ckpt")
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"epoch 1/1  loss \d+\.\d{4}  train top-1 \d+\.\d\d %  test top-1", text), text
    assert "before: top-1" in text and "after:  top-1" in text and f"wrote {out}" in text
    assert model_path.read_bytes() == before
    result = onnx.load(out)
    onnx.checker.check_model(result)
    assert result.graph.node == onnx.load(model_path).graph.node
    assert json.loads(report.read_text())["history"][0]["epoch"] == 1
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()


def test_sparse_train_reports_small_bn_scales(tmp_path, capsys):
    model_path = tmp_path / "in.onnx"
    onnx.save(conv_net(), model_path)
    code = run("sparse-train", model_path, tmp_path / "out.onnx", "--data", training_file(tmp_path),
               "--reg", "polarization", "--lambda", "0.05", "--batch-size", "16", "--no-eval")
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"BN scales \|γ\| < 0.01: 0.0 % before, \d+\.\d % after \(16 scales\)", text), text
    assert "before:" not in text


def test_training_errors_exit_2(tmp_path, capsys):
    model_path = tmp_path / "plain.onnx"
    onnx.save(conv_net(batchnorm=False), model_path)
    data = training_file(tmp_path, count=6)
    assert run("sparse-train", model_path, tmp_path / "o.onnx", "--data", data, "--reg", "l1") == 2
    assert run("finetune", model_path, tmp_path / "o.onnx", "--data", data, "--resume") == 2
    assert run("finetune", model_path, model_path, "--data", data) == 2
    assert run("finetune", model_path, tmp_path / "o.onnx", "--data", MNIST) == 2  # no x_train
    errors = capsys.readouterr().err.strip().splitlines()
    assert "needs BatchNormalization scales" in errors[0]
    assert "--resume needs --checkpoint" in errors[1]
    assert "would overwrite the input" in errors[2]
    assert "no 'x_train' or 'y_train' array" in errors[3]


WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
from onnxprune import cli
from onnxprune.cli import train
if train not in cli.COMMAND_GROUPS:
    cli.COMMAND_GROUPS = (*cli.COMMAND_GROUPS, train)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_evaluate_needs_no_torch_and_training_says_how_to_get_it(tmp_path):
    def without_torch(*argv):
        return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, argv)], capture_output=True, text=True,
                              check=False, cwd=Path(__file__).resolve().parents[2])

    evaluated = without_torch("evaluate", LENET, "--data", MNIST, *NORMALISE, "--limit", "100")
    assert evaluated.returncode == 0 and "top-1" in evaluated.stdout, evaluated.stderr
    refused = without_torch("finetune", LENET, tmp_path / "o.onnx", "--data", MNIST)
    assert refused.returncode == 2
    assert "needs PyTorch: pip install 'onnxprune[train]'" in refused.stderr


def test_layouts_dtypes_and_static_batch_give_the_same_accuracy(tmp_path):
    from onnxprune.retrain.evaluate import evaluate, load_labelled

    with np.load(MNIST) as data:
        x, y = data["x_test"][:50], data["y_test"][:50]
    model = onnx.load(LENET)
    static = onnx.load(LENET)
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8  # fed 8 at a time, last batch padded
    variants = {
        "nhw_uint8": (x, model),
        "nchw_uint8": (x[:, None], model),
        "nhwc_float": (x[..., None].astype(np.float32) / 255, model),
        "static_batch": (x, static),
    }
    results = set()
    for name, (images, onnx_model) in variants.items():
        path = save_npz(tmp_path / f"{name}.npz", x_test=images, y_test=y)
        labelled = load_labelled(path, onnx_model, mean=[0.1307], std=[0.3081])
        results.add(evaluate(onnx_model, labelled, batch_size=16).top1)
    assert len(results) == 1 and results.pop() > 0.9


@pytest.mark.parametrize("command", [
    ["evaluate", "{bad}", "--data", "{data}"],
    ["finetune", "{bad}", "{out}", "--data", "{data}"],
    ["sparse-train", "{bad}", "{out}", "--data", "{data}", "--reg", "l1"],
])
def test_a_bad_model_is_refused_before_torch_is_imported(command, tmp_path):
    """Importing torch takes seconds; a file that is not a model is refused without it."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model\n")
    argv = [part.format(bad=bad, out=tmp_path / "out.onnx", data=MNIST) for part in command]
    code = ("import sys; from onnxprune.cli import main; code = main(sys.argv[1:]); "
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "not a readable ONNX model" in done.stderr
