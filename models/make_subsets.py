"""Write the 1000-image test subsets that the tests and the demo evaluate on.

The full datasets live outside the repository (``../shared/data``); these small prefixes ship in
``models/data/`` so accuracy checks run anywhere in seconds. The CIFAR-10 copy is stored in a fixed
shuffle, so its first 1000 test images are roughly class-balanced.

    python models/make_subsets.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "models" / "data"
DATASETS = ("cifar10", "mnist")


def write_subset(source: Path, target: Path, count: int) -> None:
    """Save the first ``count`` test images and labels of ``source``, layout and dtype as-is."""
    with np.load(source) as z:
        x, y = z["x_test"][:count], z["y_test"][:count]
    np.savez_compressed(target, x_test=x, y_test=y)
    print(f"wrote {target} x_test {x.shape} {x.dtype}, y_test {y.shape}, "
          f"class counts {np.bincount(y, minlength=10).tolist()} ({target.stat().st_size:,} B)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        target = args.out_dir / f"{name}_test{args.count}.npz"
        write_subset(args.data_dir / f"{name}.npz", target, args.count)


if __name__ == "__main__":
    main()
