"""Random importance: the control every criterion must beat.

Scores are uniform in [0, 1), drawn from a generator seeded with ``(seed, group id)``, so a group's
scores depend on neither the order groups are scored in nor the other groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGroup


@dataclass(frozen=True)
class Random:
    seed: int = 0
    needs_data = False

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, not {self.seed}")

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        return np.random.default_rng([self.seed, group.id]).random(group.size)
