"""Train a BatchNorm-folded graph with its BatchNorms back, then fold them again.

``prune`` (and ``optimize``) fold every BatchNormalization into the convolution before it, so a
pruned graph reaches the trainer as bare ``Conv(x, W', b')`` layers. The function is the same, but
the training problem is not: without normalisation the loss is far sharper in the folded weights
(on the pruned ResNet-20 the largest Hessian eigenvalue is ~3400 against ~60 with BN, so SGD with
momentum 0.9 diverges above lr ~0.001) and fine-tuning blows up to inf/NaN in a few steps.

:func:`unfold_batchnorm` rewrites a copy of the model: every Conv with a weight and a bias
initializer and no BatchNormalization reading its output becomes ``Conv(x, W)`` followed by a
BatchNormalization whose statistics are measured on calibration inputs and whose scale and bias
make it the identity in eval mode (scale = sqrt(var + eps), bias = mean + b). The returned
``refold`` maps the trained module's tensors back to the original initializer names
(W' = W * s, b' = beta - mean * s, s = scale / sqrt(running var + eps)), so the trained values
are written into the original, BN-free graph. :func:`recalibrate` re-measures the running
statistics of every BN with the trained weights before they are evaluated or folded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

EPSILON = 1e-5
SUFFIX = "::bn"



@dataclass
class Unfolded:
    """The model to train (BNs inserted) and, per inserted BN, the Conv tensors it folds into."""

    model: onnx.ModelProto
    plan: dict[str, tuple[str, str]]  # BN prefix -> (Conv weight, Conv bias) initializer names

    @property
    def bn_inputs(self) -> set[str]:
        """The tensors the inserted BNs normalise (for :func:`recalibrate`'s ``only``)."""
        return {prefix + ".in" for prefix in self.plan}

    def refold(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Trained tensors by the original model's initializer names (inserted BNs folded in)."""
        folded = {name: value for name, value in arrays.items() if SUFFIX not in name}
        for prefix, (weight, bias) in self.plan.items():
            scale, beta, mean, var = (arrays[f"{prefix}.{k}"].astype(np.float64)
                                      for k in ("scale", "bias", "mean", "var"))
            s = scale / np.sqrt(var + EPSILON)
            w = arrays[weight].astype(np.float64)
            folded[weight] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            folded[bias] = (beta - mean * s).astype(np.float32)
        return folded


@torch.no_grad()
def recalibrate(module, batches: Iterable[np.ndarray], device: torch.device | str = "cpu",
                only: set[str] | None = None) -> int:
    """Set the running statistics of every BatchNormalization (of those reading a tensor in ``only``)
    to its input's statistics over ``batches``, each batch normalised with its own statistics as in
    training ("precise BN"); returns how many.

    After a short, high-loss fine-tune the exponential running averages lag far behind the weights,
    and they are what eval mode uses and what gets folded."""
    bns = [(n.inputs[0], n.inputs[3], n.inputs[4]) for n in module.nodes
           if n.op_type == "BatchNormalization" and (only is None or n.inputs[0] in only)]
    if not bns:
        return 0
    was_training, hooks = module.training, dict(module.tensor_hooks)
    saved = {name: module.initializer(name).clone() for _, m, v in bns for name in (m, v)}
    module.train()
    try:
        sums = _collect(module, [x for x, _, _ in bns])
        for x in batches:
            module(torch.from_numpy(x).to(device))
    finally:
        module.tensor_hooks.clear()
        module.tensor_hooks.update(hooks)
        module.train(was_training)
    for name, value in saved.items():  # undo the momentum updates of the passes above
        module.initializer(name).copy_(value)
    for x, m, v in bns:
        if sums[x][0]:
            mean, var = _moments(sums[x])
            module.initializer(m).copy_(mean.to(module.initializer(m)))
            module.initializer(v).copy_(var.to(module.initializer(v)))
    return len(bns)


def _collect(module, names: list[str]) -> dict[str, list]:
    """Install hooks summing count, Σx and Σx² per channel of each named tensor (float64)."""
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in names}

    def collect(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(value: torch.Tensor) -> torch.Tensor:
            v = value.detach().double().transpose(0, 1).reshape(value.shape[1], -1)
            entry = sums[name]
            entry[0] += v.shape[1]
            entry[1] = entry[1] + v.sum(1)
            entry[2] = entry[2] + (v * v).sum(1)
            return value
        return hook

    module.tensor_hooks.update({name: collect(name) for name in names})
    return sums


def _moments(entry: list) -> tuple[torch.Tensor, torch.Tensor]:
    count, total, squares = entry
    mean = total / count
    return mean, (squares / count - mean * mean).clamp_min(0)


def _candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Convs with float weight and bias initializers read by that node only, not followed by BN."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    normalised = {n.input[0] for n in model.graph.node if n.op_type == "BatchNormalization"}
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.output[0] in normalised | outputs:
            continue
        weight, bias = node.input[1], node.input[2]
        if weight in inits and bias in inits and readers[weight] == 1 and readers[bias] == 1 \
                and inits[weight].data_type == onnx.TensorProto.FLOAT:
            found.append(node)
    return found


@torch.no_grad()
def _conv_statistics(model: onnx.ModelProto, names: list[str], batches: Iterable[np.ndarray],
                     device: torch.device) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and (biased) variance of each named tensor over ``batches``, in float64."""
    from onnxprune.retrain.interpreter import OnnxModule  # the executor (kept lazy: torch-only module)

    module = OnnxModule(model).to(device).eval()
    sums = _collect(module, names)
    for x in batches:
        module(torch.from_numpy(x).to(device))
    stats = {}
    for name, entry in sums.items():
        mean, var = _moments(entry)
        stats[name] = (mean.cpu().numpy(), var.cpu().numpy())
    return stats


def unfold_batchnorm(model: onnx.ModelProto, batches: Iterable[np.ndarray],
                     device: torch.device | str = "cpu") -> Unfolded | None:
    """A copy of ``model`` with a BatchNormalization after every BN-less Conv (see the module
    docstring), measured on the inputs ``batches``; None when no Conv qualifies."""
    convs = _candidates(model)
    if not convs:
        return None
    stats = _conv_statistics(model, [c.output[0] for c in convs], batches, torch.device(device))
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_output = {c.output[0]: c for c in convs}
    plan: dict[str, tuple[str, str]] = {}
    nodes = []
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        nodes.append(node)
        if node.op_type != "Conv" or node.output[0] not in by_output:
            continue
        out, weight, bias = node.output[0], node.input[1], node.input[2]
        prefix = out + SUFFIX
        mean, var = stats[out]  # of W*x + b
        b = inits[bias].astype(np.float64)
        tensors = {
            "scale": np.sqrt(var + EPSILON), "bias": mean,  # identity in eval mode: z + b
            "mean": mean - b, "var": var,                    # statistics of W*x, without the bias
        }
        result.graph.initializer.extend(
            numpy_helper.from_array(v.astype(np.float32), f"{prefix}.{k}") for k, v in tensors.items())
        del node.input[2]
        node.output[0] = prefix + ".in"
        nodes.append(helper.make_node(
            "BatchNormalization", [prefix + ".in"] + [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")],
            [out], name=prefix, epsilon=EPSILON, momentum=0.9))
        plan[prefix] = (weight, bias)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return Unfolded(result, plan)
