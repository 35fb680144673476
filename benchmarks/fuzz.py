"""Fuzz every exact pass, the pipeline and pruning with random valid CNN graphs; shrink what fails.

    python benchmarks/fuzz.py [--cases 2000] [--seed 0] [--out out/fuzz/] [--properties fuse_pad,prune]

Each property (tests/fuzz/properties.py) runs on ``--cases`` fresh graphs (tests/fuzz/graphs.py).
The first case failing in a new way (a new failure kind) is shrunk by hypothesis and saved as
``<property>_<n>.onnx`` next to ``<property>_<n>.txt``, a one-line description; later cases failing
the same way are only counted, so one bug is shrunk once. Prints property, cases, failing cases
and distinct failures; exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxprune.cli.report import table
from tests.fuzz.graphs import graphs
from tests.fuzz.properties import PASS_PROPERTIES, PRUNE, PropertyFailure, check_pass, check_prune, ratios

Check = Callable[..., None]


def properties() -> dict[str, tuple[st.SearchStrategy, Check]]:
    """Property name -> (strategy of argument tuples, check taking them)."""
    chosen: dict[str, tuple[st.SearchStrategy, Check]] = {
        name: (st.tuples(graphs()), functools.partial(check_pass, name=name)) for name in PASS_PROPERTIES}
    chosen[PRUNE] = (st.tuples(graphs(), ratios()), check_prune)
    return chosen


@dataclass
class Tally:
    """What one property's fuzzing found: cases run, failing cases per kind, the files saved."""

    name: str
    cases: int = 0
    kinds: Counter = field(default_factory=Counter)
    saved: list[Path] = field(default_factory=list)


class Hunt:
    """One hypothesis run: counts cases until a failure of a new kind, then shrinks only that kind."""

    def __init__(self, tally: Tally, check: Check) -> None:
        self.tally, self.check = tally, check
        self.target: str | None = None
        self.last: tuple[tuple, PropertyFailure] | None = None

    def run(self, args: tuple) -> None:
        counting = self.target is None
        self.tally.cases += counting
        try:
            self.check(*args)
        except PropertyFailure as failure:
            if counting:
                known = failure.kind in self.tally.kinds
                self.tally.kinds[failure.kind] += 1
                if known:
                    return
                self.target = failure.kind
            if failure.kind == self.target:
                self.last = (args, failure)
                raise


def _settings(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, verbosity=Verbosity.quiet)


def fuzz(name: str, strategy: st.SearchStrategy, check: Check, cases: int, first_seed: int, out: Path) -> Tally:
    """Run ``cases`` cases of one property, restarting after each new failure kind (shrunk and saved)."""
    tally = Tally(name)
    for round_ in range(cases):
        hunt = Hunt(tally, check)
        test = seed(first_seed + round_)(_settings(cases - tally.cases)(given(strategy)(hunt.run)))
        try:
            test()
            return tally
        except (PropertyFailure, Flaky):
            if hunt.last is not None:
                tally.saved.append(save(name, len(tally.saved), *hunt.last, out))
        except Exception as exc:  # a bug of the generator or of this harness must not end a long run
            tally.kinds[f"the fuzzer itself raises {type(exc).__name__}"] += 1
            print(f"{name}: the fuzzer itself raises {type(exc).__name__}: {exc}", flush=True)
        if tally.cases >= cases:
            break
    return tally


def save(name: str, index: int, args: tuple, failure: PropertyFailure, out: Path) -> Path:
    """Write the shrunk graph and its one-line description; print the description."""
    out.mkdir(parents=True, exist_ok=True)
    model, extra = args[0], ", ".join(f"{value:.4g}" for value in args[1:])
    ops = " ".join(node.op_type for node in model.graph.node)
    line = (f"{name}{f'({extra})' if extra else ''}: {failure.kind}: {failure.detail} "
            f"[opset {model.opset_import[0].version}; {ops}]")
    path = out / f"{name}_{index}.onnx"
    onnx.save(model, path)
    path.with_suffix(".txt").write_text(line + "\n")
    print(f"{path}: {line}", flush=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per property")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"))
    parser.add_argument("--properties", default="", help="comma-separated subset (default: all)")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)  # the passes' own sessions would print optimizer warnings
    chosen = properties()
    if args.properties:
        chosen = {name: chosen[name] for name in args.properties.split(",")}
    tallies = []
    for index, (name, (strategy, check)) in enumerate(chosen.items()):
        tallies.append(fuzz(name, strategy, check, args.cases, args.seed + 1000 * index, args.out))
        print(f"{name}: {tallies[-1].cases} cases, {sum(tallies[-1].kinds.values())} failing", flush=True)
    rows = [(t.name, t.cases, sum(t.kinds.values()), len(t.kinds), "; ".join(t.kinds) or "-") for t in tallies]
    print(table(("property", "cases", "failures", "kinds", "failure kinds"), rows))
    return 1 if any(t.kinds for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
