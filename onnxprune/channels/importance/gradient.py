"""Gradient criteria (Taylor filter elasticity of Li, Zhu & Liu 2024; GDP of Wang et al. 2020) as pruning criteria.

The scores come from the torch round-trip (``onnxprune.retrain.gradients``): one pass of labelled
training data through the graph itself, keyed by each producer's weight name. They are computed
once, on the first group asked for, from the graph as the pruner sees it, then mapped onto groups
like any filter score (:class:`~onnxprune.channels.importance.FilterScores`). torch is imported only then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGroup
from onnxprune.core.errors import InputError, OptionError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Gradient:
    """``mode``: "taylor" (|dL/dα · α| per channel) or "gradient" (accumulated |dL/dW| per filter)."""

    mode: str = "taylor"
    data: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    limit: int | None = 2048
    batch_size: int = 64
    needs_data = True
    _scores: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise OptionError(f"criterion {self.mode} needs labelled data: {{}} FILE.npz (x_train, y_train)", "data")

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        from onnxprune.channels.importance import FilterScores

        if self._scores is None:
            self._scores = self._compute(graph)
        return FilterScores(self._scores)(group, graph)

    def _compute(self, graph: gs.Graph) -> dict[str, np.ndarray]:
        try:
            from onnxprune.retrain import channel_scores, load_labelled
            from onnxprune.retrain.evaluate import available_splits
        except ImportError as exc:
            raise InputError(f"criterion {self.mode} needs torch: pip install 'onnxprune[train]' ({exc})") from exc
        model = gs.export_onnx(graph, do_type_check=False)
        data = self.data
        assert data is not None  # __post_init__ rejects a missing data path
        split = "train" if "train" in available_splits(data) else "test"
        if split == "test":
            log.warning("%s has no x_train/y_train: scoring channels on x_test/y_test", data)
        labelled = load_labelled(data, model, split=split, mean=self.mean, std=self.std, limit=self.limit)
        return channel_scores(model, labelled, self.mode, batch_size=self.batch_size)
