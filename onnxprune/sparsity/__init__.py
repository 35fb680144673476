"""Unstructured sparsity (seed 000): which weights to zero, the all-zero channels that then go,
and how the zeros are stored so the file shrinks.

One job per module: :mod:`.thresholds` (quantile or k·std, per layer or global), :mod:`.masks`
(which tensors, and the counts), :mod:`.dead_channels` (exact removal of all-zero filters and
neurons through the channel pruner's surgery), :mod:`.packed` and :mod:`.storage` (dense, ONNX
``sparse_initializer``, or the packed form). The workflow is :mod:`onnxprune.api.sparsify`;
keeping zeros at zero while fine-tuning is :mod:`onnxprune.retrain.masks`.
"""
