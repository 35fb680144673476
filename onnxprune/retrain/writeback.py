"""Write trained tensors back into a copy of the ONNX model, by initializer name.

Only initializers whose values changed are rewritten; every other byte of the model (graph,
attributes, metadata, untouched initializers and the way they are stored) stays as it was, so a
round-trip without training returns a model equal to its input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.core.errors import InputError

log = logging.getLogger(__name__)


def write_back(model: onnx.ModelProto, tensors: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``tensors`` hold the given values.

    Each value must have its initializer's shape; it is cast to the initializer's dtype. An
    initializer whose bytes would not change is left untouched. Raises InputError for a name the
    model has no initializer for, or a shape that does not match.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    by_name = {tensor.name: tensor for tensor in result.graph.initializer}
    unknown = sorted(set(tensors) - set(by_name))
    if unknown:
        raise InputError(f"no initializer named {', '.join(unknown)} in the model")
    changed = 0
    for name, values in tensors.items():
        changed += _replace(by_name[name], np.asarray(values))
    log.info("wrote back %d of %d tensors (the others are unchanged)", changed, len(tensors))
    return result


def _replace(tensor: onnx.TensorProto, values: np.ndarray) -> bool:
    """Store ``values`` in ``tensor`` unless they equal its current bytes; True if it changed."""
    current = numpy_helper.to_array(tensor)
    if values.shape != current.shape:
        raise InputError(
            f"initializer '{tensor.name}' has shape {list(current.shape)}, the trained value {list(values.shape)}"
        )
    values = values.astype(current.dtype, copy=False)
    if values.tobytes() == current.tobytes():
        return False
    fresh = numpy_helper.from_array(values, tensor.name)
    fresh.doc_string = tensor.doc_string
    tensor.CopyFrom(fresh)
    return True


def changed_initializers(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Names of initializers whose serialized form differs between two models."""
    old = {tensor.name: tensor.SerializeToString() for tensor in before.graph.initializer}
    return [t.name for t in after.graph.initializer if old.get(t.name) != t.SerializeToString()]
