"""Human tables and machine JSON for what a command did.

Library code returns dataclasses; this module turns them into text. The CLI decides what to
print; ``write_json`` is atomic like model saving, so pipelines never read a partial report.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxprune.measure.phases import Phases
from onnxprune.measure.stats import ModelStats
from onnxprune.passes.base import PassReport


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def before_after(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Rows of metrics with both values and the change, e.g. FLOPs 1.2M -> 0.9M (-25.0 %)."""
    rows = []
    for metric, old in before.items():
        new = after.get(metric)
        rows.append((metric, human(old), human(new), _change(old, new)))
    return table(("metric", "before", "after", "change"), rows)


def summary_metrics(model_stats: ModelStats, latency_ms: float | None, count_op: str = "BatchNormalization") -> dict:
    return {
        "nodes": model_stats.nodes,
        f"{count_op} nodes": model_stats.op_histogram.get(count_op, 0),
        "parameters": model_stats.params,
        "FLOPs": model_stats.flops,
        "file size (bytes)": model_stats.size_bytes,
        "latency median (ms)": latency_ms,
    }


def passes_table(reports: Sequence[PassReport]) -> str:
    rows = [(report.name, len(report.rewrites), len(report.skipped)) for report in reports]
    return table(("pass", "rewrites", "left alone"), rows)


def phases_table(phases: Phases) -> str:
    """Seconds per phase and their total: where a command spent its time."""
    rows = [(name, round(seconds, 3)) for name, seconds in phases.seconds.items()]
    return table(("phase", "seconds"), [*rows, ("total", round(phases.total, 3))])


def with_phases(text: str, phases: Phases, verbose: bool) -> str:
    """``text``, followed (with ``-v``) by the seconds each phase took."""
    return f"{text}\n\n{phases_table(phases)}" if verbose else text


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(payload, handle, indent=2, default=_jsonable)
        handle.write("\n")
    os.replace(handle.name, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def human(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.2f}{unit}"
    return str(value)


def _change(old: Any, new: Any) -> str:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or old == 0:
        return "-"
    return f"{100.0 * (new - old) / old:+.1f} %"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(text: Any) -> bool:
    return isinstance(text, (int, float))
