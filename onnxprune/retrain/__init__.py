"""Retraining round-trip: the only place onnxprune uses torch (the ``[train]`` extra).

The ONNX graph stays the source of truth. :mod:`.interpreter` runs it as a torch module whose
parameters are the graph's float initializers, keyed by name, with one kernel per op type from
:mod:`.kernels`; :mod:`.train` fine-tunes it (with optional distillation) or sparse-trains its
BatchNorm scales (L1 or polarization);
:mod:`.gradients` scores output channels from gradients (Taylor, GDP); :mod:`.writeback` puts the
trained values back into a copy of the model, leaving everything else bit-identical.
:mod:`.evaluate` (labelled data, top-1/top-5 with onnxruntime) needs no torch.

Names are imported lazily, so ``import onnxprune.retrain.evaluate`` works without torch (the
function of that name is ``onnxprune.retrain.evaluate.evaluate``: the module keeps the name).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OnnxModule": "interpreter",
    "check_supported": "interpreter",
    "write_back": "writeback",
    "TrainConfig": "train",
    "Sparsity": "train",
    "finetune": "train",
    "sparse_train": "train",
    "iterative_pruning": "train",
    "channel_scores": "gradients",
    "taylor_scores": "gradients",
    "gradient_scores": "gradients",
    "LabelledData": "evaluate",
    "load_labelled": "evaluate",
    "Accuracy": "evaluate",
}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
