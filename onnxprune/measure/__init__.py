"""Verification, latency and counting: what a rewrite did to a model, measured with onnxruntime."""
