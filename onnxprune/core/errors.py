"""Errors the CLI maps to exit codes: bad input is 2, a failed check is 1."""


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
