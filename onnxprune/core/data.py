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

from onnxprune.core.errors import InputError, UnsupportedModelError

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
    raise UnsupportedModelError(
        f"input '{spec.name}' has dtype {spec.dtype}; cannot make random data for it"
    )


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
    return [
        {s.name: _random_array(rng, s, tuple(shapes[s.name])) for s in specs} for _ in range(count)
    ]


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"data file '{path}' not found")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise InputError(f"data file '{path}' must be .npz or .npy")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read data file '{path}': {exc}") from exc


def _pick_arrays(
    arrays: dict[str, np.ndarray], specs: list[InputSpec], path: Path
) -> dict[str, np.ndarray]:
    """Map file arrays to inputs by name; a single input also takes `x_test` or the only array."""
    if len(specs) == 1:
        name = specs[0].name
        for key in (name, PREFERRED_NPZ_KEY, ""):
            if key in arrays:
                return {name: arrays[key]}
        if len(arrays) == 1:
            return {name: next(iter(arrays.values()))}
        raise InputError(
            f"data file '{path}' has arrays {sorted(arrays)}; "
            f"name one '{name}' or '{PREFERRED_NPZ_KEY}'"
        )
    if "" in arrays:
        raise InputError(
            f"data file '{path}' holds one array but the model has {len(specs)} inputs; use .npz"
        )
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"data file '{path}' has no array for input(s) {', '.join(missing)}")
    return {s.name: arrays[s.name] for s in specs}


def _fits(shape: Sequence[int], target: Sequence[Dim]) -> bool:
    return len(shape) == len(target) and all(
        not isinstance(t, int) or s == t for s, t in zip(shape, target)
    )


def _to_model_layout(array: np.ndarray, target: tuple[Dim, ...]) -> np.ndarray:
    """Give image-like data the model's rank and NCHW layout.

    One axis short: a single sample (batch axis added) or, for a 1-channel NCHW input, a
    batch of grayscale NHW images (channel axis added). A 4-D uint8 array whose last axis
    is the channel count (and whose axis 1 is not) is NHWC and gets transposed.
    """
    channels = target[1] if len(target) == 4 else None
    if array.ndim == len(target) - 1:
        if _fits(array.shape, target[1:]):
            return array[np.newaxis]
        if channels == 1:
            return array[:, np.newaxis]
    if (
        array.dtype == np.uint8
        and array.ndim == 4
        and isinstance(channels, int)
        and array.shape[-1] == channels
        and array.shape[1] != channels
    ):
        return array.transpose(0, 3, 1, 2)
    return array


def _prepare(spec: InputSpec, array: np.ndarray, target: tuple[Dim, ...]) -> np.ndarray:
    """Fix the layout, scale uint8 images for float inputs to [0, 1], check the shape, cast."""
    array = _to_model_layout(array, target)
    if not _fits(array.shape[1:], target[1:]) or array.ndim != len(target):
        raise InputError(
            f"data for input '{spec.name}' has shape {list(array.shape)}, "
            f"expected {_format_shape(target)}"
        )
    if array.dtype == np.uint8 and spec.dtype.kind == "f" and len(target) == 4:
        logger.info("input '%s': uint8 image data scaled to [0, 1]", spec.name)
        array = array.astype(np.float32) / 255.0
    return np.ascontiguousarray(array, dtype=spec.dtype)


def channel_stats(values: Sequence[float] | None, channels: int, name: str) -> np.ndarray | None:
    """Per-channel mean or std shaped to broadcast over NCHW (one value: over everything)."""
    if values is None:
        return None
    values = np.asarray(values, np.float32).reshape(-1)
    if len(values) not in (1, channels):
        raise InputError(f"--{name} has {len(values)} values; the model's input has {channels} channel(s)")
    if name == "std" and np.any(values == 0):
        raise InputError("--std must not contain 0")
    return values.reshape((1, -1) + (1,) * 2) if len(values) == channels else values.reshape(1)


@dataclass(frozen=True)
class DataSource:
    """User data for a model: an .npz/.npy file and the normalisation to apply after scaling."""

    path: str | os.PathLike
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __str__(self) -> str:
        return str(self.path)

    def feeds(self, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None):
        return load_feeds(self.path, model, shapes, self.mean, self.std)


def load_feeds(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[dict[str, np.ndarray]]:
    """User data from ``.npz`` (one array per input name) or ``.npy`` (single-input models).

    A single-input model takes the array named like its input, else ``x_test``, else the only
    array. Arrays get the model's layout (see :func:`_to_model_layout`); uint8 data for a
    4-D float input is image data and is scaled to [0, 1]; then arrays are cast to the input
    dtype and split along axis 0 into chunks of the batch size: the model's static batch dim,
    else ``shapes``'s leading dim, else 32. With a static batch dim a partial chunk is dropped.
    ``mean``/``std`` (per channel, or one value) then normalise 4-D float inputs.
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
            raise UnsupportedModelError(
                f"input '{spec.name}' is a scalar; cannot split data into batches"
            )
        arrays[spec.name] = _normalise(_prepare(spec, picked[spec.name], target), mean, std)
    lengths = sorted({len(a) for a in arrays.values()})
    if len(lengths) != 1:
        raise InputError(f"data arrays have different sample counts: {lengths}")
    if lengths[0] == 0:
        raise InputError(f"data file '{path}' holds no samples")
    return _split(arrays, specs, shapes, lengths[0])


def _normalise(array: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    if array.ndim != 4 or array.dtype.kind != "f" or (mean is None and std is None):
        return array
    channels = array.shape[1]
    shift, scale = channel_stats(mean, channels, "mean"), channel_stats(std, channels, "std")
    if shift is not None:
        array = array - shift.astype(array.dtype)
    if scale is not None:
        array = array / scale.astype(array.dtype)
    return np.ascontiguousarray(array)


def _batch_size(spec: InputSpec, shapes: Mapping[str, tuple[int, ...]] | None) -> int:
    if spec.shape and isinstance(spec.shape[0], int):
        return spec.shape[0]
    if shapes and spec.name in shapes:
        return shapes[spec.name][0]
    return DEFAULT_DATA_BATCH


def _split(
    arrays: dict[str, np.ndarray],
    specs: list[InputSpec],
    shapes: Mapping[str, tuple[int, ...]] | None,
    samples: int,
) -> list[dict[str, np.ndarray]]:
    """Chunks along axis 0; a static batch dim needs full chunks, so a remainder is dropped."""
    batch = _batch_size(specs[0], shapes)
    if specs[0].shape and isinstance(specs[0].shape[0], int):
        if samples < batch:
            raise InputError(f"data has {samples} samples, fewer than the model's batch {batch}")
        if samples % batch:
            logger.warning("dropping %d samples to fill batches of %d", samples % batch, batch)
        samples -= samples % batch
    return [{n: a[i : i + batch] for n, a in arrays.items()} for i in range(0, samples, batch)]
