"""User data files: the one set of rules that turns an ``.npz``/``.npy`` into a model input's tensors.

``prune``/``optimize``/``blocks --data`` (feeds to verify, calibrate and score with, see
:func:`onnxprune.core.data.load_feeds`) and ``evaluate``/``finetune``/``sparse-train`` (labelled images,
see :func:`onnxprune.retrain.evaluate.load_labelled`) both read files here, so one file gives the same
tensors to every command:

1. Reading: an ``.npz`` holds named arrays, an ``.npy`` one array (named ``""``); pickled objects are
   refused; a missing, truncated or corrupt file is an :class:`InputError` on one line.
2. Layout: an array one axis short is a batch of NHW images for a 4-D input with 1 channel, else one
   sample (a batch axis is added); a 4-D array that does not fit the NCHW input but does once read as
   NHWC is transposed, whatever its dtype. Every axis but the batch axis must then match the input.
3. Scaling: uint8 data for a floating-point input are pixels, scaled to [0, 1] (``x / 255``).
4. Normalisation: ``mean``/``std`` then give ``(x - mean) / std`` for every floating-point input: one
   value for all elements, or one per channel (axis 1). Not given, they default to what the model
   declares in its metadata (``onnxprune.input_mean``/``onnxprune.input_std``, comma-separated;
   the shipped models declare theirs, and every rewrite keeps them); with neither, raw pixels are
   only scaled, with a warning: a model trained on normalised images scores near chance on them.
5. Precision: the arithmetic runs in float32 (float64 for a float64 input), then the result is cast to
   the input's dtype. Arrays keep their stored dtype until a batch is taken, so a data set costs its
   file size in memory.

Batching is the caller's: feeds drop a partial batch a static batch dim cannot take, evaluation runs it.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.core.errors import InputError, OptionError

log = logging.getLogger(__name__)

NORMALISATION_KEYS = {"mean": "onnxprune.input_mean", "std": "onnxprune.input_std"}

Dim = int | str | None

#: What each suffix's files start with: np.load falls back to unpickling anything else.
_MAGIC = {".npz": b"PK", ".npy": b"\x93NUMPY"}
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def format_shape(shape: Sequence[Dim]) -> str:
    """``[N, 3, ?, 224]``: symbolic dims by name, unknown ones as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Check that ``path`` looks like an .npz/.npy and turn any read failure into one InputError line."""
    if not path.is_file():
        raise InputError(f"data file '{path}' not found")
    magic = _MAGIC.get(path.suffix.lower())
    if magic is None:
        raise InputError(f"data file '{path}' must be .npz or .npy")
    try:
        with path.open("rb") as file:
            if file.read(len(magic)) != magic:
                raise InputError(f"cannot read data file '{path}': not a {path.suffix.lower()} file")
        yield
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read data file '{path}': {' '.join(str(exc).split())}") from exc


def array_names(path: str | os.PathLike) -> list[str]:
    """The names of the arrays in ``path``, without loading them (``[""]`` for an .npy)."""
    path = Path(path)
    with _reading(path):
        if path.suffix.lower() == ".npy":
            return [""]
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)


def read_arrays(path: str | os.PathLike, keys: Collection[str]) -> dict[str, np.ndarray]:
    """The arrays named in ``keys`` that ``path`` holds; only those are loaded."""
    path = Path(path)
    with _reading(path):
        if path.suffix.lower() == ".npy":
            return {"": np.load(path, allow_pickle=False)} if "" in keys else {}
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files if key in keys}


def _fits(shape: Sequence[int], target: Sequence[Dim]) -> bool:
    return len(shape) == len(target) and all(not isinstance(t, int) or s == t for s, t in zip(shape, target))


def to_model_layout(array: np.ndarray, target: Sequence[Dim]) -> np.ndarray:
    """``array`` given the input's rank and NCHW layout by rule 2 of the module docstring (unchecked)."""
    if array.ndim == len(target) - 1:
        if len(target) == 4 and target[1] == 1:
            return array[:, np.newaxis]
        if _fits(array.shape, target[1:]):
            return array[np.newaxis]
    if array.ndim == len(target) == 4 and not _fits(array.shape[1:], target[1:]):
        nchw = array.transpose(0, 3, 1, 2)
        if _fits(nchw.shape[1:], target[1:]):
            return nchw
    return array


def fit_input(array: np.ndarray, target: Sequence[Dim], where: str) -> np.ndarray:
    """``array`` in the input's layout; an InputError naming ``where`` when it does not fit ``target``."""
    fitted = to_model_layout(array, target)
    if fitted.ndim != len(target) or not _fits(fitted.shape[1:], target[1:]):
        hint = " (NCHW; NHWC and NHW images are converted to it)" if len(target) == 4 else ""
        raise InputError(f"{where} has shape {list(array.shape)}, expected {format_shape(target)}{hint}")
    return fitted


def channel_stats(values: Sequence[float] | None, shape: Sequence[int], name: str) -> np.ndarray | None:
    """The mean/std options shaped to broadcast over arrays of ``shape``: one value, or one per axis-1 channel."""
    if values is None:
        return None
    stats = np.asarray(values, np.float64).reshape(-1)
    channels = shape[1] if len(shape) > 1 else 1
    if len(stats) not in (1, channels):
        raise OptionError(f"{{}} has {len(stats)} values; the model's input has {channels} channel(s)", name)
    if name == "std" and np.any(stats == 0):
        raise OptionError("{} must not contain 0", "std")
    if len(stats) == 1:
        return stats
    return stats.reshape((1, channels) + (1,) * (len(shape) - 2))


def declared_normalisation(model: onnx.ModelProto) -> dict[str, list[float]]:
    """The input mean/std ``model``'s metadata declares (keys "mean", "std"; absent when not declared)."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    declared = {}
    for name, key in NORMALISATION_KEYS.items():
        if key in props:
            try:
                declared[name] = [float(value) for value in props[key].split(",")]
            except ValueError:
                raise InputError(f"the model's metadata {key}={props[key]!r} is not comma-separated numbers") from None
    return declared


def declare_normalisation(model: onnx.ModelProto, mean: Sequence[float], std: Sequence[float]) -> None:
    """Record in ``model``'s metadata the mean/std its inputs expect after uint8 pixels are scaled to [0, 1]."""
    kept = [prop for prop in model.metadata_props if prop.key not in NORMALISATION_KEYS.values()]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, values in ((NORMALISATION_KEYS["mean"], mean), (NORMALISATION_KEYS["std"], std)):
        model.metadata_props.add(key=key, value=",".join(f"{v:g}" for v in values))


def normalisation(model: onnx.ModelProto, mean: Sequence[float] | None, std: Sequence[float] | None,
                  pixels: bool, where: str) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The mean/std to apply: the given ones, else the model's declared ones; a warning for bare pixels."""
    declared = declared_normalisation(model)
    mean = declared.get("mean") if mean is None else mean
    std = declared.get("std") if std is None else std
    if pixels and mean is None and std is None:
        log.warning("%s: uint8 pixels are only scaled to [0, 1]: neither --mean/--std nor the model's metadata "
                    "give a normalisation (a model trained on normalised images scores near chance on these)", where)
    return mean, std


@dataclass(frozen=True, eq=False)
class Preprocess:
    """Stored samples to one input's tensor by rules 3-5 of the module docstring."""

    dtype: np.dtype = np.dtype(np.float32)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def for_input(cls, dtype: np.dtype, shape: Sequence[int], mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> Preprocess:
        """The steps for an input of ``dtype`` fed arrays of ``shape`` (model layout); checks mean/std."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            return cls(dtype)
        return cls(dtype, channel_stats(mean, shape, "mean"), channel_stats(std, shape, "std"))

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if self.dtype.kind != "f":
            return np.ascontiguousarray(array, dtype=self.dtype)
        work = np.result_type(self.dtype, np.float32)
        x = np.array(array, dtype=work)
        if array.dtype == np.uint8:
            x /= work.type(255)
        if self.mean is not None:
            x -= self.mean.astype(work)
        if self.std is not None:
            x /= self.std.astype(work)
        return np.ascontiguousarray(x, dtype=self.dtype)
