"""Full-size ImageNet classifiers with torchvision's layer shapes, in plain torch.nn.

The pruning benchmarks compare onnxprune with Torch-Pruning on the networks people actually
prune, so these builders reproduce torchvision's layers (widths, kernels, strides, groups,
concat order, how the head pools) without depending on torchvision. Weights are random (no
download is possible here) and BatchNorm statistics look trained, which is all MACs, latency
and magnitude-pruning rankings need; the parameter counts equal torchvision's.

    python models/imagenet.py densenet121 resnet50 --out-dir /tmp/imagenet
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.architectures import (  # noqa: E402
    Parallel,
    ShuffleUnit,
    SqueezeExcite,
    _randomize_norms,
    bottleneck,
    conv_bn,
    export,
    inverted_residual,
    make_divisible,
    shuffle_down,
)

NUM_CLASSES = 1000
OPSET = 17


class GlobalMean(nn.Module):
    """x.mean([2, 3]): how MNASNet and ShuffleNetV2 pool (ReduceMean in ONNX, not GlobalAveragePool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean([2, 3])


def classifier(channels: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pool, flatten, optional dropout, Linear to the 1000 ImageNet classes."""
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *drop, nn.Linear(channels, NUM_CLASSES))


def conv_bn_relu(
    cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
) -> nn.Sequential:
    """Inception's BasicConv2d: bias-free conv with explicit (possibly asymmetric) padding, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU()
    )


# --- ResNet-50 ------------------------------------------------------------------------------


def resnet50() -> nn.Sequential:
    """ResNet-50 v1.5 (stride on the 3x3): 7x7 stem, max pool, [3, 4, 6, 3] bottlenecks."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(bottleneck(cin, width, 4 * width, stride))
            cin = 4 * width
    return nn.Sequential(*layers, classifier(cin))


# --- Inception-v3 ---------------------------------------------------------------------------


def _avg_pool_branch(cin: int, cout: int) -> nn.Sequential:
    """3x3 stride-1 average pool, then a 1x1 conv: the pool branch of modules A, C and E."""
    return nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn_relu(cin, cout, 1))


def _factorized(cin: int, cout: int, order: Sequence[str]) -> list[nn.Module]:
    """A chain of 1x7 / 7x1 convs (order like "17", "71"): Inception's factorized 7x7."""
    kernels = {"17": ((1, 7), (0, 3)), "71": ((7, 1), (3, 0))}
    return [conv_bn_relu(cin, cout, kernels[k][0], padding=kernels[k][1]) for k in order]


def inception_a(cin: int, pool: int) -> Parallel:
    """Mixed_5b/c/d: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | pool->1x1."""
    return Parallel(
        [
            conv_bn_relu(cin, 64, 1),
            nn.Sequential(conv_bn_relu(cin, 48, 1), conv_bn_relu(48, 64, 5, padding=2)),
            nn.Sequential(
                conv_bn_relu(cin, 64, 1), conv_bn_relu(64, 96, 3, padding=1), conv_bn_relu(96, 96, 3, padding=1)
            ),
            _avg_pool_branch(cin, pool),
        ],
        "concat",
    )


def inception_b(cin: int) -> Parallel:
    """Mixed_6a (grid reduction 35 -> 17): strided 3x3 | 1x1->3x3->strided 3x3 | max pool."""
    return Parallel(
        [
            conv_bn_relu(cin, 384, 3, 2),
            nn.Sequential(conv_bn_relu(cin, 64, 1), conv_bn_relu(64, 96, 3, padding=1), conv_bn_relu(96, 96, 3, 2)),
            nn.MaxPool2d(3, 2),
        ],
        "concat",
    )


def inception_c(cin: int, c7: int) -> Parallel:
    """Mixed_6b-e: 1x1 | factorized 7x7 | twice-factorized 7x7 | pool->1x1, 192 channels each."""
    return Parallel(
        [
            conv_bn_relu(cin, 192, 1),
            nn.Sequential(conv_bn_relu(cin, c7, 1), *_factorized(c7, c7, ["17"]), *_factorized(c7, 192, ["71"])),
            nn.Sequential(
                conv_bn_relu(cin, c7, 1), *_factorized(c7, c7, ["71", "17", "71"]), *_factorized(c7, 192, ["17"])
            ),
            _avg_pool_branch(cin, 192),
        ],
        "concat",
    )


def inception_d(cin: int) -> Parallel:
    """Mixed_7a (grid reduction 17 -> 8): 1x1->strided 3x3 | 1x1->1x7->7x1->strided 3x3 | max pool."""
    return Parallel(
        [
            nn.Sequential(conv_bn_relu(cin, 192, 1), conv_bn_relu(192, 320, 3, 2)),
            nn.Sequential(
                conv_bn_relu(cin, 192, 1), *_factorized(192, 192, ["17", "71"]), conv_bn_relu(192, 192, 3, 2)
            ),
            nn.MaxPool2d(3, 2),
        ],
        "concat",
    )


def _split_1x3_3x1(channels: int) -> Parallel:
    """Inception-E's expanded filter bank: 1x3 and 3x1 convs of the same input, concatenated."""
    return Parallel(
        [
            conv_bn_relu(channels, channels, (1, 3), padding=(0, 1)),
            conv_bn_relu(channels, channels, (3, 1), padding=(1, 0)),
        ],
        "concat",
    )


def inception_e(cin: int) -> Parallel:
    """Mixed_7b/c: 1x1 | 1x1->(1x3|3x1) | 1x1->3x3->(1x3|3x1) | pool->1x1."""
    return Parallel(
        [
            conv_bn_relu(cin, 320, 1),
            nn.Sequential(conv_bn_relu(cin, 384, 1), _split_1x3_3x1(384)),
            nn.Sequential(conv_bn_relu(cin, 448, 1), conv_bn_relu(448, 384, 3, padding=1), _split_1x3_3x1(384)),
            _avg_pool_branch(cin, 192),
        ],
        "concat",
    )


def inception_v3() -> nn.Sequential:
    """Inception-v3 at 299x299, eval form (the auxiliary classifier only runs in training)."""
    return nn.Sequential(
        conv_bn_relu(3, 32, 3, 2),
        conv_bn_relu(32, 32, 3),
        conv_bn_relu(32, 64, 3, padding=1),
        nn.MaxPool2d(3, 2),
        conv_bn_relu(64, 80, 1),
        conv_bn_relu(80, 192, 3),
        nn.MaxPool2d(3, 2),
        inception_a(192, 32),
        inception_a(256, 64),
        inception_a(288, 64),
        inception_b(288),
        inception_c(768, 128),
        inception_c(768, 160),
        inception_c(768, 160),
        inception_c(768, 192),
        inception_d(768),
        inception_e(1280),
        inception_e(2048),
        classifier(2048, 0.5),
    )


# --- DenseNet-121 ---------------------------------------------------------------------------


def _bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """DenseNet's pre-activation unit: BN, ReLU, bias-free conv."""
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False))


class DenseBlock(nn.Module):
    """torchvision's _DenseBlock: every layer reads ONE Concat of all earlier features, the block
    ends with a Concat of all of them, so the graph has one k-input Concat per layer (not a chain)."""

    def __init__(self, cin: int, layers: int, growth: int = 32, bottleneck_width: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                _bn_relu_conv(cin + i * growth, bottleneck_width * growth, 1),
                _bn_relu_conv(bottleneck_width * growth, growth, 3),
            )
            for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def densenet121() -> nn.Sequential:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), transitions halving channels."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]
    channels = 64
    for index, depth in enumerate((6, 12, 24, 16)):
        layers.append(DenseBlock(channels, depth))
        channels += 32 * depth
        if index < 3:
            layers += [_bn_relu_conv(channels, channels // 2, 1), nn.AvgPool2d(2, 2)]
            channels //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(channels), nn.ReLU(), classifier(channels))


# --- MobileNetV2 / V3, EfficientNet-B0, MNASNet ------------------------------------------------


def mobilenet_v2() -> nn.Sequential:
    """MobileNetV2 1.0: ReLU6 inverted residuals (t, c, n, s) as in the paper's table 2."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # fmt: skip
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for expand, cout, repeats, first_stride in settings:
        for i in range(repeats):
            layers.append(inverted_residual(cin, cin * expand, cout, 3, first_stride if i == 0 else 1, nn.ReLU6))
            cin = cout
    return nn.Sequential(*layers, conv_bn(320, 1280, 1, act=nn.ReLU6), classifier(1280, 0.2))


def mobilenet_v3_large() -> nn.Sequential:
    """MobileNetV3-Large: bneck rows (k, exp, out, SE, hardswish, s); SE squeezes to exp/4 (divisible by 8)."""
    rows = [
        (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
        (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
        (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
        (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
        (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1),
    ]  # fmt: skip
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
    cin = 16
    for kernel, hidden, cout, se, hardswish, stride in rows:
        act = nn.Hardswish if hardswish else nn.ReLU
        gate = SqueezeExcite(hidden, make_divisible(hidden // 4), nn.ReLU, nn.Hardsigmoid) if se else None
        layers.append(inverted_residual(cin, hidden, cout, kernel, stride, act, gate))
        cin = cout
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2),
        nn.Linear(1280, NUM_CLASSES),
    )  # fmt: skip
    return nn.Sequential(*layers, conv_bn(160, 960, 1, act=nn.Hardswish), head)


def efficientnet_b0() -> nn.Sequential:
    """EfficientNet-B0: SiLU MBConv stages (expand, kernel, stride, out, repeats), SE at a quarter of cin."""
    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # fmt: skip
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
    cin = 32
    for expand, kernel, first_stride, cout, repeats in stages:
        for i in range(repeats):
            hidden = make_divisible(cin * expand)
            se = SqueezeExcite(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
            layers.append(inverted_residual(cin, hidden, cout, kernel, first_stride if i == 0 else 1, nn.SiLU, se))
            cin = cout
    return nn.Sequential(*layers, conv_bn(320, 1280, 1, act=nn.SiLU), classifier(1280, 0.2))


def mnasnet1_0() -> nn.Sequential:
    """MNASNet 1.0: depthwise-separable stem, ReLU inverted-residual stacks, x.mean([2, 3]) head."""
    stacks = [(24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2), (192, 5, 2, 6, 4),
              (320, 3, 1, 6, 1)]  # fmt: skip
    layers: list[nn.Module] = [
        conv_bn(3, 32, 3, 2), conv_bn(32, 32, 3, groups=32), conv_bn(32, 16, 1, act=None),
    ]
    cin = 16
    for cout, kernel, first_stride, expand, repeats in stacks:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            layers.append(inverted_residual(cin, cin * expand, cout, kernel, stride, nn.ReLU))
            cin = cout
    head = nn.Sequential(GlobalMean(), nn.Dropout(0.2), nn.Linear(1280, NUM_CLASSES))
    return nn.Sequential(*layers, conv_bn(320, 1280, 1), head)


# --- RegNetX-400MF, ShuffleNetV2 ----------------------------------------------------------------


def regnet_x_400mf() -> nn.Sequential:
    """RegNetX-400MF: stage widths (32, 64, 160, 400), depths (1, 2, 7, 12), group width 16, no SE."""
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
    cin = 32
    for width, depth in zip((32, 64, 160, 400), (1, 2, 7, 12)):
        for i in range(depth):
            layers.append(bottleneck(cin, width, width, 2 if i == 0 else 1, groups=width // 16))
            cin = width
    return nn.Sequential(*layers, classifier(400))


def shufflenet_v2_x1_0() -> nn.Sequential:
    """ShuffleNetV2 1.0x: stages of (24 ->) 116, 232, 464 channels repeated 4, 8, 4, conv5 to 1024."""
    layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for cout, repeats in zip((116, 232, 464), (4, 8, 4)):
        layers.append(shuffle_down(cin, cout))
        layers += [ShuffleUnit(cout) for _ in range(repeats - 1)]
        cin = cout
    head = nn.Sequential(GlobalMean(), nn.Linear(1024, NUM_CLASSES))
    return nn.Sequential(*layers, conv_bn(464, 1024, 1), head)


IMAGENET_MODELS: dict[str, Callable[[], nn.Module]] = {
    fn.__name__: fn
    for fn in (
        resnet50,
        inception_v3,
        densenet121,
        mobilenet_v2,
        mobilenet_v3_large,
        efficientnet_b0,
        mnasnet1_0,
        regnet_x_400mf,
        shufflenet_v2_x1_0,
    )
}

# torchvision's parameter counts (inception_v3 without its training-only auxiliary classifier).
TORCHVISION_PARAMS = {
    "resnet50": 25_557_032,
    "inception_v3": 23_834_568,
    "densenet121": 7_978_856,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "mnasnet1_0": 4_383_312,
    "regnet_x_400mf": 5_495_976,
    "shufflenet_v2_x1_0": 2_278_604,
}

def input_shape(name: str) -> tuple[int, int, int, int]:
    """Batch 1 at the resolution the model was designed for: 299x299 for Inception-v3, else 224x224."""
    side = 299 if name == "inception_v3" else 224
    return (1, 3, side, side)


def build(name: str, seed: int = 0) -> nn.Module:
    """Construct a model deterministically, in eval mode, with trained-looking BatchNorm statistics."""
    if name not in IMAGENET_MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(IMAGENET_MODELS)}")
    torch.manual_seed(seed)
    model = IMAGENET_MODELS[name]()
    with torch.no_grad():
        _randomize_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def export_onnx(model: nn.Module, name: str, path: str | Path | None = None) -> onnx.ModelProto:
    """Export at opset 17, batch 1, the model's own resolution, BatchNorm kept (architectures.export)."""
    return export(model, input_shape(name), path, opset=OPSET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", choices=sorted(IMAGENET_MODELS))
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/imagenet"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        path = args.out_dir / f"{name}.onnx"
        export_onnx(build(name), name, path)
        print(f"{name}: wrote {path} ({path.stat().st_size:,} B)")


if __name__ == "__main__":
    main()
