"""Which residual units to bypass: the N least important, down to a FLOPs target, or by name.

Scores come from :mod:`onnxprune.layers.scores` (higher = more important; an unscored unit, NaN,
goes last); each unit saves its own ``macs`` when bypassed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from onnxprune.core.errors import OptionError
from onnxprune.layers.units import Block


def select_blocks(
    blocks: Sequence[Block],
    scores: Mapping[str, float] | None = None,
    count: int | None = None,
    flops_target: float | None = None,
    names: Sequence[str] | None = None,
    total_macs: int | None = None,
) -> list[Block]:
    """The units to bypass, in topological order; exactly one of ``count``, ``flops_target``, ``names``.

    ``count`` N: the N lowest-scored units (higher score = more important; unscored (NaN) units go
    last). ``flops_target`` F: the lowest-scored units until the model keeps at most F of
    ``total_macs`` (each unit saves its ``macs``). ``names``: those units, by name or Add name.
    Impossible requests are an OptionError.
    """
    given = [option for option, value in (("count", count), ("flops_target", flops_target), ("names", names))
             if value is not None]
    if len(given) != 1:
        raise OptionError(f"give exactly one of {{}}, {{}}, {{}} (got {len(given)})", "count", "flops_target", "names")
    if names is not None:
        return _by_name(blocks, names)
    ranked = _ranked(blocks, scores or {})
    if count is not None:
        if not 0 <= count <= len(blocks):
            raise OptionError(f"{{}} {count}: the model has {len(blocks)} layer-pruning units", "count")
        chosen = ranked[:count]
    else:
        assert flops_target is not None  # exactly one of the three was given
        chosen = _to_target(ranked, flops_target, total_macs)
    keep = {block.name for block in chosen}
    return [block for block in blocks if block.name in keep]


def _ranked(blocks: Sequence[Block], scores: Mapping[str, float]) -> list[Block]:
    def key(item: tuple[int, Block]) -> tuple[bool, float, int]:
        index, block = item
        score = scores.get(block.name, math.nan)
        return (math.isnan(score), 0.0 if math.isnan(score) else score, index)
    return [block for _, block in sorted(enumerate(blocks), key=key)]


def _to_target(ranked: Sequence[Block], target: float, total_macs: int | None) -> list[Block]:
    if not 0 < target <= 1:
        raise OptionError(f"{{}} {target:g} must be in (0, 1]: the fraction of the model to keep", "flops_target")
    if not total_macs:
        raise OptionError("{} needs the model's FLOPs, which could not be counted (input shapes unknown?)",
                          "flops_target")
    budget = total_macs * (1 - target)
    chosen: list[Block] = []
    saved = 0
    for block in ranked:
        if saved >= budget - 1e-9 * total_macs:
            return chosen
        chosen.append(block)
        saved += block.macs
    if saved < budget - 1e-9 * total_macs:
        raise OptionError(f"{{}} {target:g} is unreachable: bypassing all {len(ranked)} units keeps "
                          f"{1 - saved / total_macs:.3f} of the FLOPs", "flops_target")
    return chosen


def _by_name(blocks: Sequence[Block], names: Sequence[str]) -> list[Block]:
    known = {block.name: block for block in blocks} | {block.add: block for block in blocks}
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(block.name for block in blocks[:6]) + (", ..." if len(blocks) > 6 else "")
        raise OptionError(f"{{}}: no layer-pruning unit named {', '.join(unknown)}; units are: {shown or '(none)'}",
                          "names")
    wanted = {known[name].name for name in names}
    return [block for block in blocks if block.name in wanted]
