"""The packed weight format: nonzero values and 8-bit position gaps, expanded by a six-node subgraph.

Before:  W1 (float32 [16,6,5,5], 90 % zeros), W2 (float32 [120,400], 95 % zeros) -> Conv, Gemm
After:   packed.values (float16 [M]), packed.deltas (uint8 [M])
             Cast(deltas, int64) -> CumSum -> positions          Cast(values, float32) -> updates
             ConstantOfShape([total], 0.0) -> ScatterElements(zeros, positions, updates)
             -> Split(sizes) -> Reshape(shape_1) -> W1, Reshape(shape_2) -> W2 -> Conv, Gemm

Every packed tensor is flattened into one buffer; its nonzeros are stored in order as a value and
the gap to the previous nonzero's position (the first: its position), 1..255. A longer gap gets
filler entries (gap 255, value 0). That is 3 bytes per nonzero with float16 values (5 with
float32, which is exact; 2 with int8) against 4 per element dense: a 95 % sparse tensor shrinks
~26x (~40x with int8). int8 values are symmetric per tensor, ``round(w / s)`` with
``s = max|w| / 127``, and each tensor is multiplied back by its ``s`` after the Reshape (one Mul
per tensor, folded like the rest); the survivors of magnitude pruning are the large weights, so
the step is small next to them (LeNet-5 at 95 % sparsity: ~0.4 % of the smallest kept weight). Every
input of the subgraph is an initializer, so onnxruntime's constant folding evaluates it once when
the session is created and runs the model with the dense weights it gives (measured: nothing of
it is left in the optimized graph); onnx's checker and any viewer see plain standard operators.

Packed: float32 initializers with at least ``MIN_ZERO_SHARE`` zeros (the format is no smaller
for denser tensors, and float16 would round them for nothing). Needs opset >= 11 (CumSum,
ScatterElements); Split takes its sizes as an input from opset 13, as an attribute before.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core import model as model_io
from onnxprune.core.errors import OptionError

PREFIX = "packed"
MIN_ZERO_SHARE = 0.5
MAX_GAP = 255
MIN_OPSET = 11
VALUE_TYPES = {"float16": np.float16, "float32": np.float32, "int8": np.int8}
INT8_LEVELS = 127


def pack(model: onnx.ModelProto, value_type: str = "float16") -> onnx.ModelProto:
    """A copy of ``model`` whose sparse float32 initializers are stored packed (unchanged if none is)."""
    if value_type not in VALUE_TYPES:
        raise OptionError(f"{{}} {value_type} is unknown; choose {' or '.join(VALUE_TYPES)}", "values")
    version = model_io.opset(model)
    if version < MIN_OPSET:
        raise OptionError(f"packed {{}} needs opset >= {MIN_OPSET} (the model has {version}); use dense", "storage")
    packed = onnx.ModelProto()
    packed.CopyFrom(model)
    chosen = _sparse_tensors(packed)
    if not chosen:
        return packed
    arrays = [numpy_helper.to_array(tensor) for tensor in chosen]
    scales = [float(np.abs(a).max()) / INT8_LEVELS or 1.0 for a in arrays] if value_type == "int8" else []
    flat = np.concatenate([(a / scale).reshape(-1) for a, scale in zip(arrays, scales or [1.0] * len(arrays))])
    values, deltas = encode(flat, VALUE_TYPES[value_type])
    names = {tensor.name for tensor in chosen}
    kept = [tensor for tensor in packed.graph.initializer if tensor.name not in names]
    del packed.graph.initializer[:]
    packed.graph.initializer.extend(kept)
    sizes = [a.size for a in arrays] if len(arrays) > 1 else []
    packed.graph.initializer.extend(_buffers(values, deltas, flat.size, arrays, sizes if version >= 13 else [],
                                             scales))
    nodes = _expansion(values.dtype, [t.name for t in chosen], sizes, version, bool(scales))
    rest = list(packed.graph.node)
    del packed.graph.node[:]
    packed.graph.node.extend(nodes + rest)
    return packed


def encode(flat: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Values and uint8 gaps of ``flat``'s nonzeros, fillers inserted where a gap exceeds 255."""
    where = np.flatnonzero(flat)
    gaps = np.diff(where, prepend=0)
    fillers = np.maximum(0, (gaps - 1) // MAX_GAP)
    last = np.cumsum(fillers + 1) - 1  # each nonzero's entry, after its fillers
    deltas = np.full(int(last[-1]) + 1 if len(last) else 0, MAX_GAP, dtype=np.uint8)
    deltas[last] = gaps - MAX_GAP * fillers
    values: np.ndarray = np.zeros(len(deltas), dtype=dtype)
    values[last] = np.rint(flat[where]) if np.issubdtype(dtype, np.integer) else flat[where]
    return values, deltas


def decode(values: np.ndarray, deltas: np.ndarray, total: int) -> np.ndarray:
    """The flat float32 buffer ``encode`` packed (what the subgraph computes)."""
    flat = np.zeros(total, dtype=np.float32)
    flat[np.cumsum(deltas.astype(np.int64))] = values
    return flat


def unpack(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its packed weights dense again (unchanged if it has none)."""
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    own = [node for node in dense.graph.node if node.name.startswith(PREFIX + "/")]
    if not own:
        return dense
    inits = {t.name: t for t in dense.graph.initializer if t.name.startswith(PREFIX + ".")}
    arrays = {name: numpy_helper.to_array(tensor) for name, tensor in inits.items()}
    flat = decode(arrays[f"{PREFIX}.values"], arrays[f"{PREFIX}.deltas"], int(arrays[f"{PREFIX}.total"][0]))
    outputs = {node.name: node.output[0] for node in own}
    shapes = [arrays[f"{PREFIX}.shape.{i}"] for i in range(sum(node.op_type == "Reshape" for node in own))]
    parts = np.split(flat, np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1])
    weights = [numpy_helper.from_array(part.reshape(shape) * arrays.get(f"{PREFIX}.scale.{i}", np.float32(1)),
                                       outputs.get(f"{PREFIX}/scale.{i}", outputs[f"{PREFIX}/reshape.{i}"]))
               for i, (part, shape) in enumerate(zip(parts, shapes))]
    kept = [t for t in dense.graph.initializer if t.name not in inits]
    del dense.graph.initializer[:]
    dense.graph.initializer.extend(kept + weights)
    rest = [node for node in dense.graph.node if not node.name.startswith(PREFIX + "/")]
    del dense.graph.node[:]
    dense.graph.node.extend(rest)
    return dense


def _sparse_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The float32 initializers worth packing (never one that is also a graph input)."""
    inputs = {value.name for value in model.graph.input}
    chosen = []
    for tensor in model.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or tensor.name in inputs:
            continue
        values = numpy_helper.to_array(tensor)
        if values.size and np.mean(values == 0) >= MIN_ZERO_SHARE:
            chosen.append(tensor)
    return chosen


def _buffers(values: np.ndarray, deltas: np.ndarray, total: int, arrays: list[np.ndarray],
             sizes: list[int], scales: list[float]) -> list[onnx.TensorProto]:
    """The initializers of the packed form: the shared buffers, the split sizes if any, one shape (and
    with int8 values one scale) per tensor."""
    shared = {"values": values, "deltas": deltas, "total": np.array([total], np.int64), "axis": np.array(0, np.int64)}
    if sizes:
        shared["sizes"] = np.array(sizes, np.int64)
    tensors = [numpy_helper.from_array(array, f"{PREFIX}.{key}") for key, array in shared.items()]
    tensors += [numpy_helper.from_array(np.array(array.shape, np.int64), f"{PREFIX}.shape.{i}")
                for i, array in enumerate(arrays)]
    tensors += [numpy_helper.from_array(np.array(scale, np.float32), f"{PREFIX}.scale.{i}")
                for i, scale in enumerate(scales)]
    return tensors


def _expansion(value_type: np.dtype, names: list[str], sizes: list[int], version: int,
               scaled: bool) -> list[onnx.NodeProto]:
    """Nodes computing every packed tensor, under its own name, from the buffers."""
    p = PREFIX
    updates = f"{p}.values"
    nodes = [
        helper.make_node("Cast", [f"{p}.deltas"], [f"{p}.gaps"], f"{p}/gaps", to=TensorProto.INT64),
        helper.make_node("CumSum", [f"{p}.gaps", f"{p}.axis"], [f"{p}.positions"], f"{p}/positions"),
        helper.make_node("ConstantOfShape", [f"{p}.total"], [f"{p}.zeros"], f"{p}/zeros",
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
    ]
    if value_type != np.float32:
        updates = f"{p}.updates"
        nodes.append(helper.make_node("Cast", [f"{p}.values"], [updates], f"{p}/updates", to=TensorProto.FLOAT))
    nodes.append(helper.make_node("ScatterElements", [f"{p}.zeros", f"{p}.positions", updates], [f"{p}.flat"],
                                  f"{p}/scatter", axis=0))
    parts = [f"{p}.part.{i}" for i in range(len(names))]
    if len(names) > 1 and version >= 13:
        nodes.append(helper.make_node("Split", [f"{p}.flat", f"{p}.sizes"], parts, f"{p}/split", axis=0))
    elif len(names) > 1:
        nodes.append(helper.make_node("Split", [f"{p}.flat"], parts, f"{p}/split", axis=0, split=sizes))
    else:
        parts = [f"{p}.flat"]
    for i, (part, name) in enumerate(zip(parts, names)):
        shaped = f"{p}.unscaled.{i}" if scaled else name
        nodes.append(helper.make_node("Reshape", [part, f"{p}.shape.{i}"], [shaped], f"{p}/reshape.{i}"))
        if scaled:
            nodes.append(helper.make_node("Mul", [shaped, f"{p}.scale.{i}"], [name], f"{p}/scale.{i}"))
    return nodes
