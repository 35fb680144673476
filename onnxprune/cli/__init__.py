"""`onnxprune <command>`: parse, call the API, print, exit.

Exit codes: 0 success, 1 a failed check (outputs differ), 2 bad input (missing or corrupt file,
unknown pass, missing input shape, ...), 3 an internal error (a bug: rerun with --debug).
Every error is exactly one line on stderr, never a traceback (unless --debug).
Each module of this package registers one group of commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import onnxruntime

from onnxprune import __version__
from onnxprune.cli import blocks, exact, prune, run, sparsify, train
from onnxprune.cli.options import flagged
from onnxprune.core.errors import OnnxPruneError

log = logging.getLogger("onnxprune")

COMMAND_GROUPS = (exact, prune, train, blocks, run, sparsify)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not (args.debug or args.verbose):
        onnxruntime.set_default_logger_severity(4)  # its notes are not the user's problem; its errors reach us raised
    try:
        return args.handler(args)
    except OnnxPruneError as error:
        print(f"onnxprune: error: {one_line(flagged(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so in one line unless asked for the traceback
        if args.debug:
            raise
        print(f"onnxprune: internal error: {type(error).__name__}: {one_line(str(error))} (rerun with --debug)",
              file=sys.stderr)
        return 3


def one_line(message: str) -> str:
    """A message that quotes a multi-line library error, as the single line the CLI promises."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The whole CLI; its commands' parsers are of ``parser_class`` too (recipes parse with a raising one)."""
    parser = parser_class(prog="onnxprune", description="ONNX in, ONNX out: fold, merge and prune CNNs.")
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


