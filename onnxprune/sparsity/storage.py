"""How a sparse model is stored: dense, ONNX ``sparse_initializer``, or packed (:mod:`.packed`).

Measured with onnxruntime 1.32 on LeNet-5 and ResNet-20 (``benchmarks/sparsity.py``):

- ``dense``: zeros stored as float32; the file does not shrink.
- ``sparse-initializer``: the ONNX field for it, float32 values and int64 indices (the checker
  refuses other index types): 12 bytes per nonzero, so a 95 % sparse tensor shrinks only ~6.7x.
  onnxruntime loads it (it densifies at load) and onnx's basic checker accepts it, but onnx's
  shape inference does not (``check_model(full_check=True)`` fails: a Conv weight of sparse
  type), nor does onnxprune's loader: a file for onnxruntime only.
- ``packed`` (the default): float16 values and uint8 gaps, expanded by standard operators that
  onnxruntime folds once at session creation: 3 bytes per nonzero; passes the full checker,
  loads anywhere, and onnxprune reads it back (:func:`decode`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import OptionError
from onnxprune.sparsity import packed

STORAGES = ("dense", "sparse-initializer", "packed")
DEFAULT_STORAGE = "packed"


def encode(model: onnx.ModelProto, storage: str = DEFAULT_STORAGE, value_type: str = "float16") -> onnx.ModelProto:
    """A copy of ``model`` (dense initializers) stored as ``storage``; ``value_type`` is the packed values'.

    The compact forms also drop the graph's ``value_info`` (shapes of intermediate tensors).
    """
    if storage == "dense":
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if storage in STORAGES:
        compact = packed.pack(model, value_type) if storage == "packed" else _to_sparse_initializers(model)
        del compact.graph.value_info[:]  # inferred shapes, optional: onnxruntime infers them again
        return compact
    raise OptionError(f"{{}} {storage} is unknown; choose one of {', '.join(STORAGES)}", "storage")


def decode(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with dense initializers only (packed or sparse ones expanded)."""
    dense = packed.unpack(model)
    for sparse in dense.graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        flat = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        flat[numpy_helper.to_array(sparse.indices).reshape(-1)] = values
        dense.graph.initializer.append(numpy_helper.from_array(flat.reshape(tuple(sparse.dims)), sparse.values.name))
    del dense.graph.sparse_initializer[:]
    return dense


def _to_sparse_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float32 initializers with at least half zeros become sparse initializers (linear int64 indices)."""
    sparse = onnx.ModelProto()
    sparse.CopyFrom(model)
    kept = []
    for tensor in sparse.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if tensor.data_type != TensorProto.FLOAT or not values.size or np.mean(values == 0) < packed.MIN_ZERO_SHARE:
            kept.append(tensor)
            continue
        where = np.flatnonzero(values)
        sparse.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(values.reshape(-1)[where], tensor.name),
            numpy_helper.from_array(where.astype(np.int64), f"{tensor.name}.indices"), list(values.shape)))
    del sparse.graph.initializer[:]
    sparse.graph.initializer.extend(kept)
    return sparse


def session_seconds(model: onnx.ModelProto | bytes, repeats: int = 5, threads: int = 1) -> float:
    """Median seconds onnxruntime takes to create a session (graph optimizations on) from ``model``'s bytes."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)
