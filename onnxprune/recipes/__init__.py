"""Recipes: a compression method pinned in one JSON file, as the sequence of commands that make it.

A deployment pipeline that runs "PFEC L1 at -27.6 % FLOPs, then 5 epochs of fine-tuning" should
not spell the flags of three commands in a shell script; it names one recipe and gets the same
steps every time. A recipe is JSON (the standard library reads it; no YAML dependency)::

    {"name": "pfec-l1", "description": "...", "reference": "Li et al. 2017",
     "steps": [{"command": "prune", "options": {"criterion": "l1", "flops-target": 0.724}},
               {"command": "finetune", "options": {"epochs": 5}},
               {"command": "optimize"}]}

Options are the command's flags without the dashes: ``true`` is a bare flag, ``false`` leaves it
out, a list is comma-joined. ``{"repeat": N, "steps": [...]}`` runs its steps N times in a row
(iterative pruning). A pruning step followed by training keeps BatchNormalization unfolded
(train with BN, deploy without) unless it says ``"keep-bn": false``; a recipe that keeps BN must
fold it again later (an ``optimize`` step, or a pruning step that folds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from onnxprune.core.errors import InputError

OptionValue = bool | int | float | str | list
TRAINING = ("finetune", "sparse-train")
"""Commands that train the weights: BN helps them, so the step before keeps it."""
KEEPS_BN = ("prune",)
"""Commands with a ``--keep-bn`` flag."""
FOLDING = ("optimize", "prune")
"""Commands that fold BN into the convolutions (pruning does unless told to keep it)."""


@dataclass(frozen=True)
class Step:
    command: str
    options: dict[str, OptionValue] = field(default_factory=dict)

    def __str__(self) -> str:
        return " ".join([self.command, *self.flags()])

    def flags(self) -> list[str]:
        """The options as command-line arguments: ``true`` a bare flag, ``false`` none, lists comma-joined."""
        argv: list[str] = []
        for name, value in self.options.items():
            if value is True:
                argv.append(f"--{name}")
            elif value is not False:
                argv += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        return argv

    @property
    def keeps_bn(self) -> bool:
        return self.command in KEEPS_BN and self.options.get("keep-bn") is True

    @property
    def folds_bn(self) -> bool:
        return self.command in FOLDING and not self.keeps_bn


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    steps: tuple[Step, ...]
    reference: str = ""
    source: str = ""

    def with_options(self, overrides: dict[int, dict[str, OptionValue]]) -> Recipe:
        """The recipe with options of steps (numbered from 1) replaced; unknown step numbers are refused."""
        bad = sorted(set(overrides) - set(range(1, len(self.steps) + 1)))
        if bad:
            raise InputError(f"recipe '{self.name}' has steps 1..{len(self.steps)}; there is no step {bad[0]}")
        steps = tuple(Step(step.command, {**step.options, **overrides.get(i, {})})
                      for i, step in enumerate(self.steps, 1))
        return Recipe(self.name, self.description, steps, self.reference, self.source)


def shipped_names() -> list[str]:
    """Names of the recipes that ship with onnxprune."""
    folder = resources.files(__name__)
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json"))


def shipped() -> list[Recipe]:
    return [load(name) for name in shipped_names()]


def load(name_or_path: str | os.PathLike) -> Recipe:
    """A shipped recipe by name, or a recipe file by path; the steps expanded and checked."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"cannot read recipe {path}: {error.strerror or error}") from None
        source = str(path)
    elif str(name_or_path) in shipped_names():
        text = resources.files(__name__).joinpath(f"{name_or_path}.json").read_text(encoding="utf-8")
        source = f"shipped recipe '{name_or_path}'"
    else:
        raise InputError(f"no recipe file or shipped recipe '{name_or_path}'; shipped: {', '.join(shipped_names())}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{source} is not valid JSON: {error}") from None
    return parse(document, source)


def parse(document: Any, source: str = "recipe") -> Recipe:
    if not isinstance(document, dict):
        raise InputError(f"{source}: a recipe is a JSON object with 'name', 'description' and 'steps'")
    unknown = sorted(set(document) - {"name", "description", "reference", "steps"})
    if unknown:
        raise InputError(f"{source}: unknown key '{unknown[0]}' (known: name, description, reference, steps)")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{source}: 'name' must be a non-empty string")
    steps = with_bn_for_training(_steps(document.get("steps"), source))
    if not steps:
        raise InputError(f"{source}: 'steps' is empty")
    _check_bn_folded(steps, source)
    return Recipe(name, str(document.get("description", "")), tuple(steps), str(document.get("reference", "")),
                  source)


def with_bn_for_training(steps: list[Step]) -> list[Step]:
    """Each pruning step right before a training step keeps BN, unless the recipe says otherwise."""
    planned = []
    for i, step in enumerate(steps):
        following = steps[i + 1].command if i + 1 < len(steps) else None
        if step.command in KEEPS_BN and following in TRAINING and "keep-bn" not in step.options:
            step = Step(step.command, {**step.options, "keep-bn": True})
        planned.append(step)
    return planned


def _check_bn_folded(steps: list[Step], source: str) -> None:
    last_kept = max((i for i, step in enumerate(steps) if step.keeps_bn), default=None)
    if last_kept is not None and not any(step.folds_bn for step in steps[last_kept + 1:]):
        raise InputError(f"{source}: step {last_kept + 1} ({steps[last_kept].command}) keeps BatchNormalization "
                         "for training, but no later step folds it: end the recipe with an 'optimize' step")


def _steps(entries: Any, source: str) -> list[Step]:
    if not isinstance(entries, list):
        raise InputError(f"{source}: 'steps' must be a list")
    steps: list[Step] = []
    for entry in entries:
        if isinstance(entry, dict) and "repeat" in entry:
            count = entry["repeat"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise InputError(f"{source}: 'repeat' must be a positive integer, got {count!r}")
            steps.extend(_steps(entry.get("steps"), source) * count)
        else:
            steps.append(_step(entry, source))
    return steps


def _step(entry: Any, source: str) -> Step:
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        raise InputError(f"{source}: each step is an object with a 'command' (and 'options'), got {entry!r}")
    unknown = sorted(set(entry) - {"command", "options"})
    if unknown:
        raise InputError(f"{source}: step '{entry['command']}' has an unknown key '{unknown[0]}'")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise InputError(f"{source}: options of step '{entry['command']}' must be an object")
    for option, value in options.items():
        if not isinstance(value, bool | int | float | str | list):
            raise InputError(f"{source}: option '{option}' of step '{entry['command']}' must be a number, string, "
                             f"boolean or list, got {value!r}")
    return Step(entry["command"], dict(options))

