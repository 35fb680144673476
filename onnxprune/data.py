"""Model inputs: what a model expects, concrete shapes for it, and feeds to run it with.

Every check onnxprune makes (equivalence, fidelity, latency, MACs) needs concrete input
shapes and data, so the rules for turning a model's declared inputs plus the user's
``--input-shape`` / ``--data`` options into arrays live here, in one place.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import InputError, UnsupportedModelError

logger = logging.getLogger(__name__)

Dim = int | str | None

#: Chunk size for user data when the model's batch dim is dynamic and no shape says otherwise.
DEFAULT_DATA_BATCH = 32

#: Key tried first in an ``.npz`` file fed to a single-input model (Keras-style data sets).
PREFERRED_NPZ_KEY = "x_test"


@dataclass(frozen=True)
class InputSpec:
    """One real graph input. ``shape`` is None when the model declares no shape at all;
    a str dim is a symbolic ``dim_param``, a None dim is unknown."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return d.dim_value
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Graph inputs that must be fed, skipping initializers listed as inputs (IR < 4 models)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise UnsupportedModelError(f"input '{value.name}' is not a tensor")
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(_dim(d) for d in tensor_type.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI strings ``name:1,3,224,224``; the name ends at the last ':' so it may hold ':'."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(
                f"bad input shape '{item}': expected NAME:D1,D2,... with positive integers, "
                "e.g. input:1,3,224,224"
            )
        if name in shapes:
            raise InputError(f"input shape for '{name}' given twice")
        shapes[name] = shape
    return shapes


def _format_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _resolve_one(spec: InputSpec, override: Sequence[int] | None) -> tuple[int, ...]:
    if override is not None:
        if spec.shape is not None and len(override) != len(spec.shape):
            raise InputError(
                f"input shape for '{spec.name}' has rank {len(override)}, but the model's input "
                f"is {_format_shape(spec.shape)} (rank {len(spec.shape)})"
            )
        return tuple(int(d) for d in override)
    if spec.shape is None:
        raise InputError(
            f"input '{spec.name}' has no declared shape; pass --input-shape {spec.name}:D1,D2,..."
        )
    dims = list(spec.shape)
    if dims and not isinstance(dims[0], int):
        logger.info("input '%s': dynamic batch dim %r set to 1", spec.name, dims[0])
        dims[0] = 1
    if all(isinstance(d, int) for d in dims):
        return tuple(dims)
    hint = ",".join(str(d) if isinstance(d, int) else f"<{d or '?'}>" for d in dims)
    raise InputError(
        f"input '{spec.name}' has shape {_format_shape(spec.shape)} with dynamic dims; "
        f"pass --input-shape {spec.name}:{hint}"
    )


def resolve_input_shapes(
    model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete shape per input: an override wins, a dynamic leading (batch) dim becomes 1,
    any other dynamic dim is an error that tells the user which option to pass."""
    specs = input_specs(model)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs) or "(none)"
        raise InputError(f"no model input named {', '.join(unknown)}; inputs are: {names}")
    return {s.name: _resolve_one(s, overrides.get(s.name)) for s in specs}


def _random_array(rng: np.random.Generator, spec: InputSpec, shape: tuple[int, ...]) -> np.ndarray:
    kind = spec.dtype.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind in "iu":
        return rng.integers(0, 10, size=shape).astype(spec.dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    raise UnsupportedModelError(f"input '{spec.name}' has dtype {spec.dtype}; cannot make random data")


def random_feeds(
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Seeded random feeds: floats ~ N(0, 1), ints in [0, 10) (safe as indices), random bools."""
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in shapes]
    if missing:
        raise InputError(f"no shape for input(s) {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    return [{s.name: _random_array(rng, s, tuple(shapes[s.name])) for s in specs} for _ in range(count)]


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"data file '{path}' not found")
    if path.suffix not in (".npz", ".npy"):
        raise InputError(f"data file '{path}' must be .npz or .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read data file '{path}': {exc}") from exc


def _pick_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], path: Path) -> dict[str, np.ndarray]:
    """Map file arrays to inputs: by name, or for one input `x_test` or the only array."""
    if len(specs) == 1:
        name = specs[0].name
        for key in (name, PREFERRED_NPZ_KEY, ""):
            if key in arrays:
                return {name: arrays[key]}
        if len(arrays) == 1:
            return {name: next(iter(arrays.values()))}
        raise InputError(
            f"data file '{path}' has arrays {sorted(arrays)}; name one '{name}' or '{PREFERRED_NPZ_KEY}'"
        )
    if "" in arrays:
        raise InputError(f"a .npy file holds one array, but the model has {len(specs)} inputs; use .npz")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"data file '{path}' has no array for input(s) {', '.join(missing)}")
    return {s.name: arrays[s.name] for s in specs}


def _prepare(spec: InputSpec, array: np.ndarray, target: tuple[Dim, ...]) -> np.ndarray:
    """Add a missing batch axis, turn uint8 NHWC images into NCHW in [0, 1], check, cast."""
    if array.ndim == len(target) - 1:
        array = array[np.newaxis]
    channels = target[1] if len(target) == 4 else None
    if (
        array.dtype == np.uint8
        and spec.dtype.kind == "f"
        and array.ndim == 4
        and isinstance(channels, int)
        and array.shape[-1] == channels
        and array.shape[1] != channels
    ):
        logger.info("input '%s': uint8 NHWC data transposed to NCHW and scaled to [0, 1]", spec.name)
        array = array.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    expected = _format_shape(target)
    if array.ndim != len(target) or any(
        isinstance(t, int) and a != t for a, t in zip(array.shape[1:], target[1:])
    ):
        raise InputError(f"data for input '{spec.name}' has shape {list(array.shape)}, expected {expected}")
    return array.astype(spec.dtype, copy=False)


def load_feeds(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """User data from ``.npz`` (one array per input name) or ``.npy`` (single-input models).

    Arrays are cast to the input dtype, given a batch axis if they lack one, and split along
    axis 0 into chunks of the batch size: the model's static batch dim, else ``shapes``'s
    leading dim, else 32. With a static batch dim a trailing partial chunk is dropped.
    """
    path = Path(path)
    specs = input_specs(model)
    picked = _pick_arrays(_read_arrays(path), specs, path)
    arrays = {}
    for spec in specs:
        target = tuple(shapes[spec.name]) if shapes and spec.name in shapes else spec.shape
        if target is None:
            raise InputError(f"input '{spec.name}' has no declared shape; pass --input-shape")
        if not target:
            raise UnsupportedModelError(f"input '{spec.name}' is a scalar; cannot split data into batches")
        arrays[spec.name] = _prepare(spec, picked[spec.name], target)
    lengths = sorted({len(a) for a in arrays.values()})
    if len(lengths) != 1:
        raise InputError(f"data arrays have different sample counts: {lengths}")
    if lengths[0] == 0:
        raise InputError(f"data file '{path}' holds no samples")
    return _split(arrays, specs, shapes, lengths[0])


def _split(
    arrays: dict[str, np.ndarray],
    specs: list[InputSpec],
    shapes: Mapping[str, tuple[int, ...]] | None,
    samples: int,
) -> list[dict[str, np.ndarray]]:
    first = specs[0]
    static = isinstance(first.shape[0], int) if first.shape else False
    if static:
        batch = first.shape[0]
    elif shapes and first.name in shapes:
        batch = shapes[first.name][0]
    else:
        batch = DEFAULT_DATA_BATCH
    if static:
        if samples < batch:
            raise InputError(f"data has {samples} samples, fewer than the model's batch size {batch}")
        if samples % batch:
            logger.warning("dropping the last %d samples: the model's batch size is %d", samples % batch, batch)
        samples -= samples % batch
    return [{n: a[i : i + batch] for n, a in arrays.items()} for i in range(0, samples, batch)]
