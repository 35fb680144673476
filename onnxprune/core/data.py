"""Model inputs: what a model expects, concrete shapes for it, and feeds to run it with.

Every check onnxprune makes (equivalence, fidelity, latency, MACs) needs concrete input
shapes and data, so the rules for turning a model's declared inputs plus the user's
input-shape / data options into arrays live here, in one place. How a data file's
arrays become tensors is :mod:`onnxprune.core.datasets`'s, shared with labelled evaluation;
this module picks the arrays for the model's inputs and cuts them into feeds.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.core.datasets import (
    Dim,
    Preprocess,
    array_names,
    fit_input,
    format_shape,
    normalisation,
    read_arrays,
)
from onnxprune.core.errors import InputError, OptionError, UnsupportedModelError

logger = logging.getLogger(__name__)

#: Chunk size for user data when the model's batch dim is dynamic and no shape says otherwise.
DEFAULT_DATA_BATCH = 32

#: Bytes of random input data made up at most, all samples together (a 1x3x4096x4096 float32 input is 0.2 GiB).
RANDOM_FEED_LIMIT = 2**30

#: Keys tried, after the input's own name, for a single-input model (Keras-style data sets; "" is an .npy).
FALLBACK_KEYS = ("x_test", "x_train", "x", "")


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


def _resolve_one(spec: InputSpec, override: Sequence[int] | None) -> tuple[int, ...]:
    if override is not None:
        if spec.shape is not None and len(override) != len(spec.shape):
            raise InputError(
                f"input shape for '{spec.name}' has rank {len(override)}, but the model's input "
                f"is {format_shape(spec.shape)} (rank {len(spec.shape)})"
            )
        return tuple(int(d) for d in override)
    if spec.shape is None:
        raise OptionError(f"input '{spec.name}' has no declared shape; give {{}} {spec.name}:D1,D2,...", "input_shape")
    dims = list(spec.shape)
    if dims and not isinstance(dims[0], int):
        logger.info("input '%s': dynamic batch dim %r set to 1", spec.name, dims[0])
        dims[0] = 1
    static = [d for d in dims if isinstance(d, int)]
    if len(static) == len(dims):
        return tuple(static)
    hint = ",".join(str(d) if isinstance(d, int) else f"<{d or '?'}>" for d in dims)
    raise OptionError(
        f"input '{spec.name}' has shape {format_shape(spec.shape)} with dynamic dims; give {{}} {spec.name}:{hint}",
        "input_shape",
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
    """Random data made directly in the input's dtype: no float64 array of the size on the way."""
    kind = spec.dtype.kind
    if kind == "f":
        if spec.dtype in (np.float32, np.float64):
            return rng.standard_normal(shape, dtype=spec.dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
    if kind in "iu":
        return rng.integers(0, 10, size=shape, dtype=spec.dtype)
    if kind == "b":
        return rng.integers(0, 2, size=shape, dtype=np.uint8).view(np.bool_)
    raise UnsupportedModelError(
        f"input '{spec.name}' has dtype {spec.dtype}; cannot make random data for it"
    )


def _check_random_size(specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], count: int) -> None:
    """Refuse, before allocating anything, random feeds over RANDOM_FEED_LIMIT bytes in all.

    A graph input may declare a huge static shape (an exporter's placeholder, a hostile file):
    making it up would end in a MemoryError, when the user can simply give a smaller shape.
    """
    sizes = {s.name: math.prod(shapes[s.name]) * s.dtype.itemsize for s in specs}
    total = count * sum(sizes.values())
    if total <= RANDOM_FEED_LIMIT:
        return
    name = max(sizes, key=lambda n: sizes[n])
    dims = ",".join(map(str, shapes[name]))
    raise OptionError(
        f"random inputs of these shapes need {total / 2**30:.1f} GiB ({count} sample(s); input '{name}' is "
        f"[{dims}]), over the {RANDOM_FEED_LIMIT / 2**30:.0f} GiB onnxprune makes up; give {{}} {name}:D0,D1,... "
        "with a smaller shape (or real data)",
        "input_shape",
    )


def random_feeds(
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Seeded random feeds: floats ~ N(0, 1), ints in [0, 10) (safe as indices), random bools.

    At most RANDOM_FEED_LIMIT bytes in all, else an OptionError pointing at ``input_shape``.
    """
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in shapes]
    if missing:
        raise InputError(f"no shape for input(s) {', '.join(missing)}")
    _check_random_size(specs, shapes, count)
    rng = np.random.default_rng(seed)
    return [
        {s.name: _random_array(rng, s, tuple(shapes[s.name])) for s in specs} for _ in range(count)
    ]


def _pick_keys(names: list[str], specs: list[InputSpec], path: Path) -> dict[str, str]:
    """The file's array for each input: by name; a single input also takes a fallback key or the only array."""
    if len(specs) == 1:
        name = specs[0].name
        for key in (name, *FALLBACK_KEYS):
            if key in names:
                return {name: key}
        if len(names) == 1:
            return {name: names[0]}
        raise InputError(f"data file '{path}' has arrays {sorted(names)}; name one '{name}' or '{FALLBACK_KEYS[0]}'")
    if "" in names:
        raise InputError(f"data file '{path}' holds one array but the model has {len(specs)} inputs; use .npz")
    missing = [s.name for s in specs if s.name not in names]
    if missing:
        raise InputError(f"data file '{path}' has no array for input(s) {', '.join(missing)}")
    return {s.name: s.name for s in specs}


@dataclass(frozen=True)
class DataSource:
    """User data for a model: an .npz/.npy file and the normalisation to apply after scaling."""

    path: str | os.PathLike
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __str__(self) -> str:
        return str(self.path)

    def feeds(
        self, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> list[dict[str, np.ndarray]]:
        return load_feeds(self.path, model, shapes, self.mean, self.std)


def _target(spec: InputSpec, shapes: Mapping[str, tuple[int, ...]] | None) -> tuple[Dim, ...]:
    target = tuple(shapes[spec.name]) if shapes and spec.name in shapes else spec.shape
    if target is None:
        raise OptionError(f"input '{spec.name}' has no declared shape; give {{}}", "input_shape")
    if not target:
        raise UnsupportedModelError(f"input '{spec.name}' is a scalar; cannot split data into batches")
    return target


def load_feeds(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[dict[str, np.ndarray]]:
    """User data from ``.npz`` (one array per input name) or ``.npy`` (single-input models).

    A single-input model takes the array named like its input, else ``x_test``, ``x_train``,
    ``x``, else the only array. Arrays become tensors by the rules of :mod:`onnxprune.core.datasets`
    (layout, uint8 scaling, ``mean``/``std``, dtype) and are split along axis 0 into chunks of the
    batch size: the model's static batch dim, else ``shapes``'s leading dim, else 32.
    """
    path = Path(path)
    specs = input_specs(model)
    keys = _pick_keys(array_names(path), specs, path)
    stored = read_arrays(path, set(keys.values()))
    arrays, steps = {}, {}
    for spec in specs:
        key = keys[spec.name]
        where = f"data for input '{spec.name}' ({path}{f': {key!r}' if key else ''})"
        arrays[spec.name] = fit_input(stored[key], _target(spec, shapes), where)
        pixels = arrays[spec.name].dtype == np.uint8 and np.dtype(spec.dtype).kind == "f"
        steps[spec.name] = Preprocess.for_input(spec.dtype, arrays[spec.name].shape,
                                                *normalisation(model, mean, std, pixels, where))
    lengths = sorted({len(a) for a in arrays.values()})
    if len(lengths) != 1:
        raise InputError(f"data arrays have different sample counts: {lengths}")
    if lengths[0] == 0:
        raise InputError(f"data file '{path}' holds no samples")
    return [{n: steps[n](arrays[n][window]) for n in arrays} for window in _windows(specs, shapes, lengths[0])]


def _batch_size(spec: InputSpec, shapes: Mapping[str, tuple[int, ...]] | None) -> int:
    if spec.shape and isinstance(spec.shape[0], int):
        return spec.shape[0]
    if shapes and spec.name in shapes:
        return shapes[spec.name][0]
    return DEFAULT_DATA_BATCH


def _windows(specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]] | None, samples: int) -> list[slice]:
    """Chunks along axis 0. A static batch dim takes full chunks only, so its remainder is dropped:
    zero padding would put made-up samples into verification and calibration."""
    batch = _batch_size(specs[0], shapes)
    if specs[0].shape and isinstance(specs[0].shape[0], int):
        if samples < batch:
            raise InputError(f"data has {samples} samples, fewer than the model's batch {batch}")
        if samples % batch:
            logger.warning("dropping %d samples to fill batches of %d", samples % batch, batch)
        samples -= samples % batch
    return [slice(i, i + batch) for i in range(0, samples, batch)]
