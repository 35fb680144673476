"""models/imagenet.py reproduces torchvision's layers: same parameter counts, and the exports run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import imagenet
from models.architectures import export


@pytest.mark.parametrize("name", sorted(imagenet.IMAGENET_MODELS))
def test_parameter_count_equals_torchvision(name: str) -> None:
    model = imagenet.build(name)
    assert sum(p.numel() for p in model.parameters()) == imagenet.TORCHVISION_PARAMS[name]


def test_export_matches_torch_at_a_small_input() -> None:
    model = imagenet.build("shufflenet_v2_x1_0")  # the smallest, and the one with Split/Reshape/Transpose
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    onnx_model = export(model, x.shape, opset=imagenet.OPSET)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (1, 1000)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_input_shape_is_299_for_inception_only() -> None:
    assert imagenet.input_shape("inception_v3") == (1, 3, 299, 299)
    assert imagenet.input_shape("densenet121") == (1, 3, 224, 224)
    with pytest.raises(KeyError, match="unknown model 'resnet18'"):
        imagenet.build("resnet18")
