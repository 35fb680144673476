"""Which weights unstructured magnitude pruning zeroes: a quantile or a k·std threshold, per layer or global.

Seed 000 (Xie et al. 2020) prunes "the redundant parameters inside each layer": weights whose
magnitude falls below a threshold are set to zero. Two thresholds:

- ``sparsity`` s: the ``round(s·n)`` smallest ``|w|`` of a layer (``global_scope``: of all
  pruned layers together) are zeroed, ranked with a stable sort, so exactly that many go
  whatever the ties;
- ``std_k`` k (Han et al. 2015's quality parameter): ``|w| <= k·std(w)`` is zeroed, the std of
  the layer's weights (``global_scope``: of all of them).

Weights that are already zero stay zero. Neither threshold given: nothing new is zeroed (the
zero pattern of a fine-tuned sparse model is only stored again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.core.errors import OptionError


@dataclass(frozen=True)
class Threshold:
    """How much to prune: at most one of ``sparsity`` (in [0, 1)) and ``std_k`` (>= 0)."""

    sparsity: float | None = None
    std_k: float | None = None
    global_scope: bool = False

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.std_k is not None:
            raise OptionError("give {} or {}, not both", "sparsity", "std_k")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise OptionError(f"{{}} {self.sparsity:g} must be in [0, 1) (the fraction of weights zeroed)",
                              "sparsity")
        if self.std_k is not None and not self.std_k >= 0:
            raise OptionError(f"{{}} {self.std_k:g} must be >= 0 (weights with |w| <= k·std are zeroed)", "std_k")

    @property
    def active(self) -> bool:
        return self.sparsity is not None or self.std_k is not None


def keep_masks(weights: Mapping[str, np.ndarray], rule: Threshold) -> dict[str, np.ndarray]:
    """A boolean mask per weight (True: kept), of the weight's shape."""
    if not rule.global_scope:
        return {name: _keep(np.asarray(values).reshape(-1), rule).reshape(np.shape(values))
                for name, values in weights.items()}
    flat = [np.asarray(values).reshape(-1) for values in weights.values()]
    kept = _keep(np.concatenate(flat), rule) if flat else np.zeros(0, bool)
    parts = np.split(kept, np.cumsum([len(f) for f in flat])[:-1])
    return {name: part.reshape(np.shape(values)) for (name, values), part in zip(weights.items(), parts)}


def _keep(values: np.ndarray, rule: Threshold) -> np.ndarray:
    """The entries of one flat array (a layer, or every layer together) that ``rule`` keeps."""
    magnitude = np.abs(values.astype(np.float64))
    keep = magnitude > 0
    if rule.sparsity is not None:
        order = np.argsort(magnitude, kind="stable")
        keep[order[:round(rule.sparsity * len(values))]] = False
    elif rule.std_k is not None and len(values):
        keep &= magnitude > rule.std_k * float(np.std(values.astype(np.float64)))
    return keep
