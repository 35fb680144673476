"""`onnxprune run RECIPE IN OUT`: run a recipe's commands in sequence, through this CLI's own parsers.

Each step is parsed by the same parser as when typed, so a recipe means exactly what its commands
mean; every step is parsed before the first runs, so a typo in step 3 costs nothing. Intermediate
models live in a temporary folder beside OUT and vanish; the input is only read; OUT is written by
the last step that writes a model (atomically, like every command), and nothing is written when a
step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from onnxprune import recipes
from onnxprune.cli import report
from onnxprune.cli.options import flagged, normalisation_options
from onnxprune.core.errors import InputError, OnnxPruneError
from onnxprune.recipes import OptionValue, Recipe, Step

FORWARDED = ("data", "mean", "std", "input-shape")
"""Options of `run` handed to every step that has them (unless the step sets its own)."""
TRANSFORM = ["input", "output"]
INSPECTION = ["model"]


class StepFailed(OnnxPruneError):
    """A step's error, said with the step it came from; exits with that step's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RecipeParser(argparse.ArgumentParser):
    """The CLI's parser, raising instead of exiting, so a bad step is one error naming the step."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)


@dataclass(frozen=True)
class PlannedStep:
    number: int
    step: Step
    argv: list[str]
    writes: bool


def register(commands) -> None:
    parser = commands.add_parser("run", help="run a recipe: a pinned sequence of commands (see --list)")
    parser.add_argument("recipe", nargs="?", help="a shipped recipe's name or a recipe .json file")
    parser.add_argument("input", nargs="?")
    parser.add_argument("output", nargs="?")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--dry-run", action="store_true", help="check every step and print the commands; run nothing")
    parser.add_argument("--set", action="append", default=[], metavar="STEP.OPTION=VALUE",
                        help="override an option of a step, numbered from 1 (e.g. 2.epochs=1); repeatable")
    parser.add_argument("--data", metavar="FILE", help="data handed to every step that takes --data")
    normalisation_options(parser)
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                        help="concrete shape of a dynamic model input, handed to every step (repeatable)")
    parser.add_argument("--report", metavar="FILE", help="write one JSON report with every step's report")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every pass does")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.list:
        print(_listing(recipes.shipped()))
        return 0
    if not (args.recipe and args.input and args.output):
        raise InputError("run needs RECIPE INPUT OUTPUT (or --list)")
    source, destination = Path(args.input), Path(args.output)
    if not source.is_file():
        raise InputError(f"{source}: no such model file")
    if destination.resolve() == source.resolve():
        raise InputError(f"{destination} is the input: write the output elsewhere (the input is never overwritten)")
    recipe = recipes.load(args.recipe).with_options(overrides(args.set))
    with tempfile.TemporaryDirectory(dir=destination.parent.resolve(), prefix=f".{destination.name}.") as work:
        planned = plan(recipe, args, source, destination, Path(work))
        if args.dry_run:
            print("\n".join(f"[{p.number}/{len(planned)}] onnxprune {' '.join(p.argv)}" for p in planned))
            return 0
        reports = [_execute(p, len(planned), args) for p in planned]
    if args.report:
        report.write_json(args.report, {"command": "run", "recipe": recipe.name, "source": recipe.source,
                                        "steps": reports})
    return 0


def plan(recipe: Recipe, args: argparse.Namespace, source: Path, destination: Path, work: Path) -> list[PlannedStep]:
    """Every step's argv, parsed once to check it: the last model-writing step writes ``destination``."""
    from onnxprune.cli import build_parser

    parser = build_parser(RecipeParser)
    commands = _subcommands(parser)
    kinds = [_kind(step, commands, i) for i, step in enumerate(recipe.steps, 1)]
    if not any(kinds):
        raise InputError(f"recipe '{recipe.name}' has no step that writes a model")
    last_writer = max(i for i, writes in enumerate(kinds) if writes)
    planned, current = [], source
    for i, (step, writes) in enumerate(zip(recipe.steps, kinds)):
        output = destination if i == last_writer else work / f"{i + 1}-{step.command}.onnx"
        positionals = [str(current), str(output)] if writes else [str(current)]
        sub = commands[step.command]
        argv = [step.command, *positionals, *step.flags(), *_forwarded(args, step, sub)]
        if args.report:
            argv += ["--report", str(work / f"{i + 1}.json")]
        try:
            parser.parse_args(argv)
        except InputError as error:
            raise InputError(f"recipe '{recipe.name}' step {i + 1} ({step.command}): {error}") from None
        planned.append(PlannedStep(i + 1, step, argv, writes))
        current = output if writes else current
    return planned


def overrides(settings: list[str]) -> dict[int, dict[str, OptionValue]]:
    """``--set 2.epochs=1`` values by step number; values read as JSON where they parse (1, true, [..])."""
    result: dict[int, dict[str, OptionValue]] = {}
    for setting in settings:
        target, equals, text = setting.partition("=")
        number, dot, option = target.partition(".")
        if not (equals and dot and number.isdigit() and option):
            raise InputError(f"--set {setting}: expected STEP.OPTION=VALUE, e.g. 2.epochs=1")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        result.setdefault(int(number), {})[option.removeprefix("--")] = value
    return result


def _execute(planned: PlannedStep, total: int, args: argparse.Namespace) -> dict:
    from onnxprune.cli import build_parser

    if not args.quiet:
        print(f"[{planned.number}/{total}] onnxprune {planned.step}", flush=True)
    step_args = build_parser().parse_args(planned.argv)
    try:
        code = step_args.handler(step_args)
    except OnnxPruneError as error:
        raise StepFailed(f"step {planned.number}/{total} ({planned.step.command}): {flagged(error)}",
                         error.exit_code) from None
    if code:
        raise StepFailed(f"step {planned.number}/{total} ({planned.step.command}) failed (exit {code}); "
                         "later steps not run", code)
    if not args.quiet:
        print(flush=True)
    return {"step": planned.number, "command": planned.step.command, "options": planned.step.options,
            "report": _read_report(step_args)}


def _read_report(step_args: argparse.Namespace) -> dict | None:
    path = getattr(step_args, "report", None)
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public accessor for the subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI parser has no commands")


def _kind(step: Step, commands: dict[str, argparse.ArgumentParser], number: int) -> bool:
    """Whether the step writes a model (IN OUT) rather than reading one (MODEL); other commands are refused."""
    steppable = sorted(name for name, sub in commands.items() if name != "run" and _positionals(sub) in
                       (TRANSFORM, INSPECTION))
    if step.command not in steppable:
        raise InputError(f"step {number}: '{step.command}' cannot be a recipe step; commands: {', '.join(steppable)}")
    return _positionals(commands[step.command]) == TRANSFORM


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [action.dest for action in parser._get_positional_actions()]


def _forwarded(args: argparse.Namespace, step: Step, sub: argparse.ArgumentParser) -> list[str]:
    argv: list[str] = []
    for name in FORWARDED:
        value = getattr(args, name.replace("-", "_"))
        if not value or name in step.options or f"--{name}" not in sub._option_string_actions:
            continue
        if name == "input-shape":
            argv += [item for shape in value for item in (f"--{name}", shape)]
        else:
            argv += [f"--{name}", value if isinstance(value, str) else ",".join(map(str, value))]
    for flag in ("quiet", "verbose", "debug"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    return argv


def _listing(shipped: list[Recipe]) -> str:
    return "\n\n".join(f"{recipe.name}\n  {recipe.description}\n  {recipe.reference}\n  "
                       + "\n  ".join(f"{i}. {step}" for i, step in enumerate(recipe.steps, 1))
                       for recipe in shipped)
