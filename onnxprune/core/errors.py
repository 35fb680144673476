"""Errors the CLI maps to exit codes: bad input is 2, a failed check is 1."""

from __future__ import annotations

from collections.abc import Callable


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    exit_code = 2


class InputError(OnnxPruneError):
    """The user's input cannot be used: a missing or corrupt file, a bad option, a missing shape."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model uses something onnxprune cannot handle (an opset, an op, an external-data path)."""


class VerificationError(OnnxPruneError):
    """A check failed: the optimized model does not match the original within tolerance."""

    exit_code = 1


class OptionError(InputError):
    """A bad value of a named option, worded in the library's parameter names.

    The message is a template with ``{}`` for each option in ``options``; ``str()`` shows the
    parameter names (``flops_target``) and :meth:`render` lets a front end show its own spelling
    (the CLI's ``--flops-target``), so library code never names CLI flags.
    """

    def __init__(self, template: str, *options: str) -> None:
        self.template = template
        self.options = options
        super().__init__(self.render(str))

    def render(self, spell: Callable[[str], str]) -> str:
        return self.template.format(*(spell(option) for option in self.options))
