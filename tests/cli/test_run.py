"""`onnxprune run`: recipes parsed, checked before anything runs, run in sequence, nothing left behind."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.architectures import INPUT_SHAPES, export_onnx
from onnxprune import recipes
from onnxprune.cli import main
from onnxprune.core.errors import InputError
from onnxprune.measure.stats import model_stats

ARCHITECTURE = "resnet_basic"


@functools.cache
def _resnet() -> onnx.ModelProto:
    return export_onnx(ARCHITECTURE, dynamic_batch=True)


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "resnet.onnx"
    path.parent.mkdir()
    onnx.save(_resnet(), path)
    return path


@pytest.fixture()
def data_path(tmp_path: Path) -> Path:
    _, channels, height, width = INPUT_SHAPES[ARCHITECTURE]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, height, width, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, 48, dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images[:32], y_train=labels[:32], x_test=images[32:], y_test=labels[32:])
    return path


def write_recipe(tmp_path: Path, steps: list, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "description": "test", "steps": steps}))
    return path


PRUNE_FINETUNE_FOLD = [
    {"command": "prune", "options": {"ratio": 0.5, "runs": 0}},
    {"command": "finetune", "options": {"epochs": 1, "batch-size": 16, "no-eval": True}},
    {"command": "optimize", "options": {"runs": 0}},
]


def test_prune_finetune_optimize_chain_writes_one_pruned_folded_model(model_path, data_path, tmp_path, capsys):
    recipe, out, report = write_recipe(tmp_path, PRUNE_FINETUNE_FOLD), tmp_path / "out" / "o.onnx", tmp_path / "r.json"
    out.parent.mkdir()
    before = model_path.read_bytes()
    assert main(["run", str(recipe), str(model_path), str(out), "--data", str(data_path), "--report", str(report)]) == 0
    original, result = model_stats(onnx.load(model_path)), model_stats(onnx.load(out))
    assert result.params < 0.4 * original.params
    assert "BatchNormalization" not in result.op_histogram
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx"]  # the intermediates are gone
    steps = json.loads(report.read_text())["steps"]
    assert [s["command"] for s in steps] == ["prune", "finetune", "optimize"]
    assert steps[0]["options"]["keep-bn"] is True  # added: the next step trains
    text = capsys.readouterr().out
    assert "[1/3] onnxprune prune --ratio 0.5 --runs 0 --keep-bn" in text and "[3/3] onnxprune optimize" in text


def test_a_failing_step_names_itself_and_writes_nothing(model_path, tmp_path, capsys):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x_test=np.zeros((4, 32, 32, 3), np.uint8))
    recipe, out = write_recipe(tmp_path, PRUNE_FINETUNE_FOLD), tmp_path / "o.onnx"
    assert main(["run", str(recipe), str(model_path), str(out), "--data", str(unlabelled)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxprune: error: step 2/3 (finetune): ") and "x_train" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "tiny.json", "x.npz"]


def test_every_step_is_checked_before_the_first_runs(model_path, tmp_path, capsys):
    steps = [{"command": "prune", "options": {"ratio": 0.5}}, {"command": "optimize", "options": {"passses": "x"}}]
    out = tmp_path / "o.onnx"
    assert main(["run", str(write_recipe(tmp_path, steps)), str(model_path), str(out)]) == 2
    err = capsys.readouterr().err
    assert "step 2 (optimize): unrecognized arguments: --passses x" in err
    assert not out.exists()


BAD_RECIPES = {
    "unknown command": ([{"command": "shrink"}], "'shrink' cannot be a recipe step; commands: "),
    "not a step": ([{"command": "check"}], "'check' cannot be a recipe step"),
    "no model written": ([{"command": "inspect"}], "has no step that writes a model"),
    "bad repeat": ([{"repeat": 0, "steps": [{"command": "optimize"}]}], "'repeat' must be a positive integer"),
    "bad option value": ([{"command": "prune", "options": {"ratio": None}}], "must be a number, string"),
    "unknown step key": ([{"command": "prune", "flags": {}}], "unknown key 'flags'"),
    "BN never folded": ([{"command": "prune", "options": {"ratio": 0.5}}, {"command": "finetune"}],
                        "keeps BatchNormalization for training, but no later step folds it"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_exit_2_with_a_clear_message(case, model_path, tmp_path, capsys):
    steps, message = BAD_RECIPES[case]
    assert main(["run", str(write_recipe(tmp_path, steps)), str(model_path), str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_set_overrides_a_step_option_and_checks_the_step_number(model_path, tmp_path, capsys):
    recipe = write_recipe(tmp_path, PRUNE_FINETUNE_FOLD)
    args = ["run", str(recipe), str(model_path), str(tmp_path / "o.onnx"), "--data", "d.npz", "--dry-run"]
    assert main([*args, "--set", "2.epochs=3", "--set", "1.keep-bn=false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--epochs 3" in lines[1] and "--keep-bn" not in lines[0]
    assert main([*args, "--set", "4.epochs=3"]) == 2
    assert main([*args, "--set", "epochs=3"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "has steps 1..3; there is no step 4" in errors[0] and "expected STEP.OPTION=VALUE" in errors[1]


@pytest.mark.parametrize("name", recipes.shipped_names())
def test_every_shipped_recipe_parses_against_the_cli(name, model_path, tmp_path, capsys):
    args = ["run", name, str(model_path), str(tmp_path / "o.onnx"), "--data", "d.npz", "--dry-run"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(recipes.load(name).steps) and f" {tmp_path / 'o.onnx'} " in lines[-1]


def test_shipped_recipes_are_listed_and_unknown_names_refused(capsys):
    assert len(recipes.shipped_names()) >= 8
    assert main(["run", "--list"]) == 0
    assert "pfec-l1-resnet56" in capsys.readouterr().out
    with pytest.raises(InputError, match="no recipe file or shipped recipe 'nope'; shipped: elasticity-vgg16"):
        recipes.load("nope")
