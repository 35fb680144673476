"""Every op the channel pruner can prune has a torch kernel (so a pruned model can be fine-tuned),
and every kernel is compared against onnxruntime by an op-form case of the executor tests."""

from __future__ import annotations

from onnxprune.channels.handlers import load_all as load_handlers
from onnxprune.retrain.kernels import load_all as load_kernels
from tests.retrain.test_executor import CASES


def test_every_op_with_a_channel_handler_has_a_kernel():
    assert sorted(set(load_handlers()) - set(load_kernels())) == []


def test_every_kernel_has_an_onnxruntime_parity_case():
    tested = {node.op_type for nodes, *_ in CASES.values() for node in nodes}
    assert sorted(set(load_kernels()) - tested) == []
