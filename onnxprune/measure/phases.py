"""Wall-clock seconds of each phase of a command (load, analysis, surgery, verification ...).

A user who finds a command slow sees with ``-v`` where the time went; the speed benchmark reads
the same record. Phases are kept in the order they first ran; timing one name twice adds up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Phases:
    """Seconds per phase name, in the order the phases first ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Add the wall-clock time of the block to phase ``name`` (also when the block raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def extend(self, other: Phases) -> Phases:
        """Add every phase of ``other`` into this record; returns self."""
        for name, seconds in other.seconds.items():
            self.add(name, seconds)
        return self

    def replace(self, name: str, parts: Phases) -> Phases:
        """A record in this order with phase ``name`` replaced by ``parts`` (what it was made of)."""
        result = Phases()
        for phase, seconds in self.seconds.items():
            if phase == name:
                result.extend(parts)
            else:
                result.add(phase, seconds)
        return result

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, float]:
        return dict(self.seconds)
