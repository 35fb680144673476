"""PyTorch definitions of the project's reference networks.

The ONNX files in ``models/`` are exported from these classes, so the optimizer is tested on
graphs a real exporter produces. Normalisation is deliberately not part of any network: it is a
preprocessing step (see ``PREPROCESSING``), so the exported graphs start at the first Conv.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PREPROCESSING: dict[str, dict[str, tuple[float, ...]]] = {
    "mnist": {"mean": (0.1307,), "std": (0.3081,)},
    "cifar10": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
"""Per-channel mean/std applied after scaling uint8 pixels to [0, 1]."""

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
"""Output widths of VGG-16's 13 convolutions; "M" is a 2x2 max-pool."""


def preprocess(images: np.ndarray, dataset: str) -> np.ndarray:
    """Turn uint8 NHW (MNIST) or NHWC (CIFAR) images into the float32 NCHW input of the models."""
    x = images.astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    spec = PREPROCESSING[dataset]
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


class LeNet5(nn.Module):
    """Classic LeNet-5 for 1x28x28 MNIST: a small graph with Conv, MaxPool and Gemm."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs plus a parameter-free "option A" shortcut (akamaster layout)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = stride != 1 or in_planes != planes
        self.pad = planes // 4

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or subsample by 2 and zero-pad channels (Slice + Pad in ONNX)."""
        if not self.downsample:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR-10 whose state-dict names match akamaster/pytorch_resnet_cifar10.

    Global pooling uses ``adaptive_avg_pool2d`` (GlobalAveragePool in ONNX), which equals the
    original ``avg_pool2d`` over the final 8x8 map.
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _make_stage(16, 16, blocks, stride=1)
        self.layer2 = _make_stage(16, 32, blocks, stride=2)
        self.layer3 = _make_stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A stage of BasicBlocks; only the first one changes stride/width."""
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class VGG16BN(nn.Module):
    """VGG-16 with BatchNorm for 32x32 CIFAR-10: five pooled stages, then Linear 512 -> 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = _make_vgg_features(VGG16_CFG)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _make_vgg_features(cfg: tuple[int | str, ...]) -> nn.Sequential:
    """Conv3x3-BN-ReLU per integer in ``cfg``, MaxPool2d(2) per ``"M"``."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)),
                   nn.ReLU(inplace=True)]
        in_channels = int(item)
    return nn.Sequential(*layers)
