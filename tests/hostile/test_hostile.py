"""Every command refuses every hostile file the same way: one stderr line, exit 2, nothing written.

The input folder is hashed before and after (it must be untouched), the output folder must stay
empty (no partial file, no temporary), and the two "huge" cases also run in a subprocess whose
peak memory is measured: a declared 2^31-element tensor must be refused, never allocated. The
corpus is built once and the parser reused: a refused run costs little more than parsing argv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxprune import cli
from onnxprune.cli import main
from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError
from tests.hostile import corpus

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT_KB = 1024 * 1024  # VmHWM is in KiB: 1 GiB
#: python -c program: `onnxprune optimize MODEL OUT` for each MODEL, printing the exit codes.
# The child prints its exit codes, then its own peak RSS (VmHWM, reset by exec; ru_maxrss is not, so a
# child of a big pytest process would report the parent's peak).
OPTIMIZE_EACH = ("import sys; from onnxprune.cli import main; "
                 "print(*(main(['optimize', model, sys.argv[-1]]) for model in sys.argv[1:-1])); "
                 "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")

COMMANDS: dict[str, list[str]] = {
    "optimize": ["optimize", "{model}", "{out}", "--runs", "0"],
    "check": ["check", "{model}", "{valid}"],
    "bench": ["bench", "{model}", "--runs", "1", "--warmup", "0"],
    "inspect": ["inspect", "{model}"],
    "groups": ["groups", "{model}"],
    "prune": ["prune", "{model}", "{out}", "--ratio", "0.5", "--runs", "0"],
    "blocks": ["blocks", "{model}"],
    "bypass": ["bypass", "{model}", "{out}", "--blocks", "1", "--runs", "0"],
    "joint": ["joint", "{model}", "{out}", "--layers", "1", "--runs", "0"],
    "evaluate": ["evaluate", "{model}", "--data", "{data}"],
    "finetune": ["finetune", "{model}", "{out}", "--data", "{data}", "--batch-size", "4"],
    "sparse-train": ["sparse-train", "{model}", "{out}", "--data", "{data}", "--reg", "l1", "--batch-size", "4"],
    "run": ["run", "{recipe}", "{model}", "{out}"],
}
RECIPE = {"name": "prune-fold", "steps": [{"command": "prune", "options": {"ratio": 0.5, "runs": 0}},
                                          {"command": "optimize", "options": {"runs": 0}}]}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """A valid model and data set, for the commands' other arguments."""
    folder = tmp_path_factory.mktemp("valid")
    model = folder / "valid.onnx"
    onnx.save(corpus.valid_model(), model)
    recipe = folder / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    return {"valid": model, "data": corpus.valid_data(folder / "data.npz"), "recipe": recipe}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    return corpus.write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


@pytest.fixture(autouse=True)
def one_parser(monkeypatch, parser):
    """Building the parser (210 options) is most of the cost of a run refused at load."""
    monkeypatch.setattr(cli, "build_parser", lambda *_: parser)


def argv(command: str, model: Path, out: Path, valid: dict[str, Path]) -> list[str]:
    fields = {"model": model, "out": out / "result.onnx", **valid}
    return [part.format(**fields) for part in COMMANDS[command]]


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every regular file under ``folder`` and target of every link, by relative path."""
    seen = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            key = str(path.relative_to(folder))
            if path.is_symlink():
                seen[key] = f"-> {os.readlink(path)}"
            elif path.is_file():
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_the_valid_model_is_accepted(command, valid, tmp_path, capfd):
    """The control: without the hostile change every command succeeds on the corpus's model."""
    assert main(argv(command, valid["valid"], tmp_path, valid)) == 0, capfd.readouterr().err
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("case", corpus.CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_file_is_refused(case, command, cases, valid, tmp_path, capfd):
    model = cases[case]
    folder = model.parents[1]  # the case's folder: the model's and whatever it points at
    before = snapshot(folder)
    code = main(argv(command, model, tmp_path, valid))
    stderr = capfd.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("onnxprune: error: ") and stderr.count("\n") == 1, stderr
    assert snapshot(folder) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error, code, prefix", [
    (InputError("quoting a library:\n  its second line"), 2, "onnxprune: error: quoting a library: its second line"),
    (RuntimeError("a bug\nwith details"), 3, "onnxprune: internal error: RuntimeError: a bug with details (rerun"),
])
def test_a_multi_line_error_is_printed_on_one_line(error, code, prefix, valid, monkeypatch, capfd):
    def fail(path):
        raise error

    monkeypatch.setattr(model_io, "load", fail)
    assert main(["inspect", str(valid["valid"])]) == code
    stderr = capfd.readouterr().err
    assert stderr.startswith(prefix) and stderr.count("\n") == 1, stderr


def test_declared_huge_tensors_are_refused_without_allocating_them(cases, tmp_path):
    """One child runs `optimize` on both: its peak RSS bounds what either tried to allocate."""
    command = [sys.executable, "-c", OPTIMIZE_EACH, str(cases["initializer_huge"]), str(cases["external_huge"]),
               str(tmp_path / "out" / "r.onnx")]
    with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
        child = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr)
        status = child.wait()
        stdout.seek(0), stderr.seek(0)
        *codes, peak_kb = stdout.read().split()
        lines = stderr.read().splitlines()
    assert status == 0 and codes == ["2", "2"], lines
    assert len(lines) == 2 and all(line.startswith("onnxprune: error: ") for line in lines), lines
    assert int(peak_kb) < MEMORY_LIMIT_KB
    assert sorted(os.listdir(tmp_path)) == ["stderr", "stdout"]
