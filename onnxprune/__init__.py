"""onnxprune: ONNX in, ONNX out. Exact fold/merge passes and structured pruning for CNNs."""

__version__ = "0.1.0"
