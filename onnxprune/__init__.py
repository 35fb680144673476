"""onnxprune: ONNX in, ONNX out. Exact fold/merge passes and structured pruning for CNNs.

The package reads in the order data flows: ``core`` (load, graph, save), ``passes`` (exact
rewrites), ``channels`` and ``layers`` (the two kinds of pruning), ``recover`` (accuracy
recovery after pruning), ``measure`` (verify, time, count), ``api`` (file-level workflows),
``retrain`` (torch round-trip) and ``cli``.
"""

__version__ = "0.1.0"

from onnxprune.channels import policy  # noqa: E402  (README: `from onnxprune import policy`)
from onnxprune.passes import pipeline  # noqa: E402  (README: `from onnxprune import pipeline`)

__all__ = ["__version__", "pipeline", "policy"]
