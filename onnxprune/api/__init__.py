"""The Python API behind every CLI command: file in, checked file out, a report to show.

One module per workflow (``optimize``, ``prune``, ``bypass``, ``joint``), all through
:func:`onnxprune.api.common.rewrite_file`: load -> rewrite -> check -> save atomically -> measure.
Model-level functions (``prune_model``, ``bypass_model``, ``joint_prune_model``) work in memory
and never modify the caller's model; each returns a dataclass.
"""

from onnxprune.api.bypass import Bypassed, BypassOutcome, Selection, bypass_file, bypass_model, detect
from onnxprune.api.common import Cost, Feeds, Inputs, Measurement, measure, rewrite_file
from onnxprune.api.joint import JointOutcome, JointResult, joint_prune_file, joint_prune_model
from onnxprune.api.optimize import OptimizeOutcome, check_equivalence, optimize_file
from onnxprune.api.prune import PRE_PRUNE_PASSES, Pruned, PruneOutcome, prepare_for_pruning, prune_file, prune_model

__all__ = [
    "PRE_PRUNE_PASSES", "BypassOutcome", "Bypassed", "Cost", "Feeds", "Inputs", "JointOutcome", "JointResult",
    "Measurement", "OptimizeOutcome", "PruneOutcome", "Pruned", "Selection", "bypass_file", "bypass_model",
    "check_equivalence", "detect", "joint_prune_file", "joint_prune_model", "measure", "optimize_file",
    "prepare_for_pruning", "prune_file", "prune_model", "rewrite_file",
]
