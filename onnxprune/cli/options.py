"""Options and output helpers every command group shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from onnxprune.api import Cost
from onnxprune.cli import report
from onnxprune.core.data import DataSource
from onnxprune.core.errors import OnnxPruneError, OptionError
from onnxprune.measure.verify import Fidelity


def common_options(parser: argparse.ArgumentParser, data_option: bool = True) -> None:
    """Options every command shares: input shapes, data, report, verbosity."""
    parser.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
        help="concrete shape of a model input with dynamic dimensions (repeatable)",
    )
    if data_option:
        parser.add_argument("--data", metavar="FILE", help=".npz/.npy inputs to use instead of random ones")
        normalisation_options(parser)
    parser.add_argument("--report", metavar="FILE", help="write a machine-readable JSON report")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every pass does")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def tolerance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance (default: 3x the model's own float32 noise floor, at least "
                             "1e-5 of each output's scale)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="relative tolerance; alone: that fraction of each output's largest magnitude")


def emit(args: argparse.Namespace, payload: dict, text: Callable[[], str]) -> None:
    """Write the JSON report if asked, and print the text unless --quiet."""
    if args.report:
        report.write_json(args.report, payload)
    if not args.quiet:
        print(text())


def names(text: str) -> list[str]:
    """A comma-separated option value as a list."""
    return [name.strip() for name in text.split(",") if name.strip()]


def normalisation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mean", type=floats, metavar="M[,M,...]",
                        help="per-channel mean, after scaling uint8 to [0, 1]")
    parser.add_argument("--std", type=floats, metavar="S[,S,...]",
                        help="per-channel std, after scaling uint8 to [0, 1]")


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers (argparse type)."""
    try:
        return [float(value) for value in names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def data_source(args: argparse.Namespace) -> DataSource | None:
    """The --data file with its --mean/--std, or None without --data."""
    if not getattr(args, "data", None):
        return None
    return DataSource(args.data, getattr(args, "mean", None), getattr(args, "std", None))


def cost_lines(cost: Cost, fidelity: Fidelity) -> list[str]:
    """The before/after table, the fidelity and the written path of a lossy command."""
    before = report.summary_metrics(cost.before.stats, cost.before.median_ms)
    after = report.summary_metrics(cost.after.stats, cost.after.median_ms)
    agreement = "-" if fidelity.top1_agreement is None else f"{100 * fidelity.top1_agreement:.1f} %"
    hint = " (random inputs: pass --data with real samples for a meaningful fidelity)" if cost.inputs.random else ""
    return [
        report.before_after(before, after),
        "",
        f"fidelity on {cost.inputs.source}: cosine {fidelity.cosine:.4f}, top-1 agreement {agreement}{hint}",
        f"wrote {cost.destination}",
    ]


FLAGS = {"count": "--blocks", "global_ranking": "--global", "lam": "--lambda", "latency_aware": "--no-latency-table",
         "latency_threads": "--threads"}
"""Library parameter names whose flag is not the parameter with dashes (``flops_target`` -> ``--flops-target``)."""


def flag(option: str) -> str:
    """The command-line spelling of a library parameter name."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def flagged(error: OnnxPruneError) -> str:
    """An error's message, with the options it names spelled as flags."""
    return error.render(flag) if isinstance(error, OptionError) else str(error)
