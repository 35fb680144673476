"""A zoo of tiny CNNs of the common families, exported to ONNX the way real exporters do.

The passes are tested and benchmarked on these graphs, so each family keeps its defining
structure (shortcut kind, branch merge, activation, grouping, normalization) while staying
small enough (32x32 input, widths 8-64, a few blocks) for the whole suite to run on 2 cores.
BatchNorm is kept as BatchNormalization nodes and given random statistics, so folding it is
never a no-op.
"""

from __future__ import annotations

import functools
import io
import operator
import os
import warnings
from collections.abc import Callable, Sequence

import onnx
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10

Activation = Callable[[], nn.Module]
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --- shared building blocks -------------------------------------------------------------


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Activation | None = nn.ReLU,
    bn: bool = True,
) -> nn.Sequential:
    """Conv (bias only without BN), optional BN, optional activation: every family's basic unit."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=not bn)
    ]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Pre-activation unit (DenseNet): the BN reads a Concat, not a Conv, so it cannot fold backwards."""
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    )


class Parallel(nn.Module):
    """Runs branches on the same input and merges them by sum (residuals, RepVGG) or channel concat."""

    def __init__(self, branches: Sequence[nn.Module], merge: str) -> None:
        super().__init__()
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got {merge!r}")
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        if self.merge == "concat":
            return torch.cat(outputs, dim=1)
        return functools.reduce(operator.add, outputs)  # not sum(): that would emit Add(0, x)


def residual(
    body: nn.Module, shortcut: nn.Module | None = None, act: Activation = nn.Identity
) -> nn.Sequential:
    """act(body(x) + shortcut(x)); the shortcut defaults to identity."""
    return nn.Sequential(Parallel([body, nn.Identity() if shortcut is None else shortcut], "sum"), act())


class PadShortcut(nn.Module):
    """Parameter-free CIFAR ResNet "option A" shortcut: subsample by 2, zero-pad channels (Slice + Pad)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """ResNet shortcut: identity when shapes agree, else a strided 1x1 conv + BN ("option B")."""
    if cin == cout and stride == 1:
        return nn.Identity()
    return conv_bn(cin, cout, 1, stride, act=None)


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(avgpool(x))))): channel attention of MobileNetV3, EfficientNet, RegNetY."""

    def __init__(self, channels: int, squeeze: int, act: Activation, gate: Activation) -> None:
        super().__init__()
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeeze, 1),
            act(),
            nn.Conv2d(squeeze, channels, 1),
            gate(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class Permute(nn.Module):
    """Tensor.permute as a module, for channels-last sections inside an nn.Sequential."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class LayerScale(nn.Module):
    """Per-channel learnable scale on a channels-last tensor (ConvNeXt's gamma), exported as Mul."""

    def __init__(self, channels: int, init: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle, written as exporters see it: Reshape, Transpose, Reshape."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


def layer_norm_2d(channels: int) -> nn.Sequential:
    """LayerNorm over the channels of an NCHW tensor, via channels-last (torchvision's LayerNorm2d)."""
    return nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(channels, eps=1e-6), Permute(0, 3, 1, 2))


def pool_head(channels: int, *extra: nn.Module) -> nn.Sequential:
    """Global average pool, flatten, extra width-preserving layers, then the Linear to NUM_CLASSES."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *extra, nn.Linear(channels, NUM_CLASSES))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of divisor without losing more than 10 % (MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --- family blocks ----------------------------------------------------------------------


def basic_block(cin: int, cout: int, stride: int, shortcut: nn.Module | None = None) -> nn.Sequential:
    """ResNet BasicBlock: two 3x3 conv-BN, added to the shortcut, then ReLU."""
    body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
    if shortcut is None:
        shortcut = projection(cin, cout, stride)
    return residual(body, shortcut, nn.ReLU)


def bottleneck(
    cin: int, mid: int, cout: int, stride: int, groups: int = 1, se: nn.Module | None = None
) -> nn.Sequential:
    """ResNet-50 bottleneck 1x1-3x3-1x1; grouped 3x3 for ResNeXt, plus SE after it for RegNetY."""
    body = nn.Sequential(
        conv_bn(cin, mid, 1),
        conv_bn(mid, mid, 3, stride, groups),
        nn.Identity() if se is None else se,
        conv_bn(mid, cout, 1, act=None),
    )
    return residual(body, projection(cin, cout, stride), nn.ReLU)


def inverted_residual(
    cin: int,
    hidden: int,
    cout: int,
    kernel: int,
    stride: int,
    act: Activation,
    se: nn.Module | None = None,
) -> nn.Sequential:
    """MobileNetV2/V3 and EfficientNet MBConv: 1x1 expand, depthwise, optional SE, linear 1x1 project.

    The residual (no activation after it) exists only when stride is 1 and channels agree.
    """
    expand = [conv_bn(cin, hidden, 1, act=act)] if hidden != cin else []
    body = nn.Sequential(
        *expand,
        conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act),
        nn.Identity() if se is None else se,
        conv_bn(hidden, cout, 1, act=None),
    )
    return residual(body) if stride == 1 and cin == cout else body


def dense_layer(cin: int, growth: int) -> Parallel:
    """DenseNet-BC layer: concat the input with BN-ReLU-1x1 (4*growth) then BN-ReLU-3x3 (growth)."""
    new = nn.Sequential(bn_relu_conv(cin, 4 * growth, 1), bn_relu_conv(4 * growth, growth, 3))
    return Parallel([nn.Identity(), new], "concat")


def dense_block(cin: int, growth: int, layers: int) -> nn.Sequential:
    """Layers whose inputs grow by `growth` channels each."""
    return nn.Sequential(*(dense_layer(cin + i * growth, growth) for i in range(layers)))


def transition(cin: int, cout: int) -> nn.Sequential:
    """DenseNet transition: BN-ReLU-1x1 conv compressing channels, then 2x2 average pool."""
    return nn.Sequential(bn_relu_conv(cin, cout, 1), nn.AvgPool2d(2))


def inception_module(cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int], pool: int) -> Parallel:
    """GoogLeNet module: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1, concatenated."""
    return Parallel(
        [
            conv_bn(cin, c1, 1),
            nn.Sequential(conv_bn(cin, c3[0], 1), conv_bn(c3[0], c3[1], 3)),
            nn.Sequential(conv_bn(cin, c5[0], 1), conv_bn(c5[0], c5[1], 5)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, pool, 1)),
        ],
        "concat",
    )


def fire(cin: int, squeeze: int, expand: int) -> nn.Sequential:
    """SqueezeNet fire module (no BN): squeeze 1x1, then expand 1x1 and 3x3 concatenated."""
    expand_branches = [conv_bn(squeeze, expand, k, bn=False) for k in (1, 3)]
    return nn.Sequential(conv_bn(cin, squeeze, 1, bn=False), Parallel(expand_branches, "concat"))


def shuffle_branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """ShuffleNetV2 main branch: 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU."""
    return nn.Sequential(
        conv_bn(cin, cout, 1),
        conv_bn(cout, cout, 3, stride, groups=cout, act=None),
        conv_bn(cout, cout, 1),
    )


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with stride 1: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = shuffle_branch(channels // 2, channels // 2, 1)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([kept, self.branch(transformed)], dim=1))


def shuffle_down(cin: int, cout: int) -> nn.Sequential:
    """ShuffleNetV2 downsampling unit: both branches see the whole input with stride 2."""
    shortcut = nn.Sequential(
        conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, cout // 2, 1)
    )
    return nn.Sequential(
        Parallel([shortcut, shuffle_branch(cin, cout // 2, 2)], "concat"), ChannelShuffle(2)
    )


def convnext_block(channels: int) -> nn.Sequential:
    """ConvNeXt block: dw 7x7, channels-last LayerNorm, Linear 4x, GELU, Linear, gamma, residual."""
    body = nn.Sequential(
        nn.Conv2d(channels, channels, 7, padding=3, groups=channels),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(channels, eps=1e-6),
        nn.Linear(channels, 4 * channels),
        nn.GELU(),
        nn.Linear(4 * channels, channels),
        LayerScale(channels),
        Permute(0, 3, 1, 2),
    )
    return residual(body)


def repvgg_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """RepVGG training-time block: ReLU(3x3 conv-BN + 1x1 conv-BN + BN(x) when shapes agree)."""
    branches: list[nn.Module] = [
        conv_bn(cin, cout, 3, stride, act=None),
        conv_bn(cin, cout, 1, stride, act=None),
    ]
    if cin == cout and stride == 1:
        branches.append(nn.BatchNorm2d(cout))
    return nn.Sequential(Parallel(branches, "sum"), nn.ReLU())


# --- whole networks ---------------------------------------------------------------------


def resnet_basic() -> nn.Sequential:
    """ResNet-18 style: identity and 1x1-projection shortcuts."""
    return nn.Sequential(
        conv_bn(3, 16),
        basic_block(16, 16, 1),
        basic_block(16, 32, 2),
        basic_block(32, 32, 1),
        basic_block(32, 64, 2),
        pool_head(64),
    )


def resnet_bottleneck() -> nn.Sequential:
    """ResNet-50 style: bottlenecks expanding 4x, projection on the first block of each stage."""
    return nn.Sequential(
        conv_bn(3, 16),
        bottleneck(16, 8, 32, 1),
        bottleneck(32, 8, 32, 1),
        bottleneck(32, 16, 64, 2),
        pool_head(64),
    )


def resnet_cifar_option_a() -> nn.Sequential:
    """CIFAR ResNet (He et al. 2016, sec. 4.2) with the parameter-free option-A shortcut."""
    return nn.Sequential(
        conv_bn(3, 16),
        basic_block(16, 16, 1),
        basic_block(16, 32, 2, PadShortcut(16)),
        basic_block(32, 32, 1),
        basic_block(32, 64, 2, PadShortcut(32)),
        pool_head(64),
    )


def vgg_bn() -> nn.Sequential:
    """VGG with BN: conv-BN-ReLU stacks between max pools, flatten, Linear-ReLU-Dropout-Linear."""
    return nn.Sequential(
        conv_bn(3, 16),
        nn.MaxPool2d(2),
        conv_bn(16, 32),
        nn.MaxPool2d(2),
        conv_bn(32, 64),
        conv_bn(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(64, NUM_CLASSES),
    )


def mobilenet_v2() -> nn.Sequential:
    """MobileNetV2: ReLU6 inverted residuals, expansion 1 then 4."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.ReLU6),
        inverted_residual(16, 16, 8, 3, 1, nn.ReLU6),
        inverted_residual(8, 32, 12, 3, 2, nn.ReLU6),
        inverted_residual(12, 48, 12, 3, 1, nn.ReLU6),
        inverted_residual(12, 48, 16, 3, 2, nn.ReLU6),
        inverted_residual(16, 64, 16, 3, 1, nn.ReLU6),
        conv_bn(16, 64, 1, act=nn.ReLU6),
        pool_head(64, nn.Dropout()),
    )


def _v3_block(
    cin: int, kernel: int, hidden: int, cout: int, se: bool, act: Activation, stride: int
) -> nn.Sequential:
    """MobileNetV3 bneck row (k, exp, out, SE, NL, s); SE squeezes to hidden/4 with a hard-sigmoid gate."""
    gate = SqueezeExcite(hidden, make_divisible(hidden / 4), nn.ReLU, nn.Hardsigmoid) if se else None
    return inverted_residual(cin, hidden, cout, kernel, stride, act, gate)


def mobilenet_v3() -> nn.Sequential:
    """MobileNetV3-Small-like: hardswish, SE with hard-sigmoid gate, Linear-hardswish head."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.Hardswish),
        _v3_block(16, 3, 16, 16, True, nn.ReLU, 2),
        _v3_block(16, 3, 48, 24, False, nn.ReLU, 2),
        _v3_block(24, 3, 64, 24, False, nn.ReLU, 1),
        _v3_block(24, 5, 64, 32, True, nn.Hardswish, 2),
        _v3_block(32, 5, 64, 32, True, nn.Hardswish, 1),
        conv_bn(32, 64, 1, act=nn.Hardswish),
        pool_head(64, nn.Linear(64, 64), nn.Hardswish(), nn.Dropout()),
    )


def _mbconv(cin: int, expand: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    """EfficientNet MBConv: SiLU everywhere, SE squeezing to a quarter of the block's input width."""
    hidden = cin * expand
    se = SqueezeExcite(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
    return inverted_residual(cin, hidden, cout, kernel, stride, nn.SiLU, se)


def efficientnet() -> nn.Sequential:
    """EfficientNet-B0-like: MBConv1 then MBConv4 blocks with 3x3 and 5x5 depthwise kernels."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.SiLU),
        _mbconv(16, 1, 8, 3, 1),
        _mbconv(8, 4, 16, 3, 2),
        _mbconv(16, 4, 16, 3, 1),
        _mbconv(16, 4, 24, 5, 2),
        _mbconv(24, 4, 24, 5, 1),
        conv_bn(24, 64, 1, act=nn.SiLU),
        pool_head(64, nn.Dropout()),
    )


def densenet() -> nn.Sequential:
    """DenseNet-BC (growth 8, compression 0.5): dense blocks of concatenated growth, transitions."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        dense_block(16, 8, 3),
        transition(40, 20),
        dense_block(20, 8, 3),
        nn.BatchNorm2d(44),
        nn.ReLU(),
        pool_head(44),
    )


def inception() -> nn.Sequential:
    """GoogLeNet-style (BN variant): two inception modules separated by max pools."""
    return nn.Sequential(
        conv_bn(3, 16),
        nn.MaxPool2d(3, 2, 1),
        inception_module(16, 8, (8, 16), (4, 8), 8),
        nn.MaxPool2d(3, 2, 1),
        inception_module(40, 16, (16, 24), (8, 8), 8),
        pool_head(56, nn.Dropout()),
    )


def squeezenet() -> nn.Sequential:
    """SqueezeNet 1.1: fire modules, ceil-mode max pools, conv classifier then global pool."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        fire(16, 8, 16),
        fire(32, 8, 16),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        fire(32, 12, 24),
        nn.Dropout(),
        nn.Conv2d(48, NUM_CLASSES, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def shufflenet_v2() -> nn.Sequential:
    """ShuffleNetV2: downsampling units, then split/transform/concat/shuffle units."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2),
        shuffle_down(16, 32),
        ShuffleUnit(32),
        shuffle_down(32, 64),
        ShuffleUnit(64),
        conv_bn(64, 64, 1),
        pool_head(64),
    )


def resnext() -> nn.Sequential:
    """ResNeXt: bottlenecks with a grouped 3x3 conv (cardinality 8)."""
    return nn.Sequential(
        conv_bn(3, 16),
        bottleneck(16, 32, 32, 1, groups=8),
        bottleneck(32, 32, 32, 1, groups=8),
        bottleneck(32, 64, 64, 2, groups=8),
        pool_head(64),
    )


def _regnet_y_block(cin: int, cout: int, stride: int, group_width: int = 8) -> nn.Sequential:
    """RegNetY block: bottleneck ratio 1, group conv of fixed group width, SE at a quarter of cin."""
    se = SqueezeExcite(cout, max(1, cin // 4), nn.ReLU, nn.Sigmoid)
    return bottleneck(cin, cout, cout, stride, cout // group_width, se)


def regnet() -> nn.Sequential:
    """RegNetY-like: stride-2 stem, stages of Y blocks widening 16 -> 32 -> 64."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2),
        _regnet_y_block(16, 16, 1),
        _regnet_y_block(16, 32, 2),
        _regnet_y_block(32, 32, 1),
        _regnet_y_block(32, 64, 2),
        pool_head(64),
    )


def convnext() -> nn.Sequential:
    """ConvNeXt: patchify stem + LayerNorm, blocks, LayerNorm + 2x2 stride-2 downsampling, LN head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 2, 2),
        layer_norm_2d(16),
        convnext_block(16),
        convnext_block(16),
        layer_norm_2d(16),
        nn.Conv2d(16, 32, 2, 2),
        convnext_block(32),
        nn.AdaptiveAvgPool2d(1),
        layer_norm_2d(32),
        nn.Flatten(),
        nn.Linear(32, NUM_CLASSES),
    )


def repvgg_train() -> nn.Sequential:
    """RepVGG-A-like, training-time form (three summed branches per block), before reparametrization."""
    return nn.Sequential(
        repvgg_block(3, 16, 2),
        repvgg_block(16, 32, 2),
        repvgg_block(32, 32, 1),
        repvgg_block(32, 64, 2),
        repvgg_block(64, 64, 1),
        pool_head(64),
    )


def plain_chain() -> nn.Sequential:
    """The simplest foldable graph: three conv-BN-ReLU, global pool, Linear."""
    return nn.Sequential(conv_bn(3, 8), conv_bn(8, 16, 3, 2), conv_bn(16, 32, 3, 2), pool_head(32))


def lenet5() -> nn.Sequential:
    """LeNet-5 on 28x28 (padded first conv), ReLU and max pools, no BN."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, NUM_CLASSES),
    )


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    fn.__name__: fn
    for fn in (
        resnet_basic,
        resnet_bottleneck,
        resnet_cifar_option_a,
        vgg_bn,
        mobilenet_v2,
        mobilenet_v3,
        densenet,
        inception,
        squeezenet,
        shufflenet_v2,
        efficientnet,
        resnext,
        regnet,
        convnext,
        repvgg_train,
        plain_chain,
        lenet5,
    )
}

INPUT_SHAPES: dict[str, tuple[int, ...]] = {name: (1, 3, 32, 32) for name in ARCHITECTURES} | {
    "lenet5": (1, 1, 28, 28)
}


# --- construction and export ------------------------------------------------------------


def _randomize_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Give BN stats, norm affines and layer scales trained-looking values, so folds are not identities."""
    for module in model.modules():
        if isinstance(module, BATCHNORMS):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        if isinstance(module, (*BATCHNORMS, nn.LayerNorm)):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        if isinstance(module, LayerScale):
            module.gamma.copy_(torch.rand(module.gamma.shape, generator=gen) + 0.5)


def build(name: str, seed: int = 0) -> nn.Module:
    """Construct a registered architecture deterministically, in eval mode, with randomized norms."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    with torch.no_grad():
        _randomize_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def export(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike[str] | None = None,
    opset: int = 13,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Export with the TorchScript exporter in PRESERVE mode, which keeps BatchNormalization nodes.

    (EVAL mode would fold BN into Conv already, leaving nothing for the passes to do.)
    Writes to `path` when given; returns the loaded ModelProto either way.
    """
    target = io.BytesIO() if path is None else path
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(tuple(input_shape)),),
            target,
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
        )
    if path is None:
        return onnx.load_from_string(target.getvalue())
    return onnx.load(path)


def export_onnx(name: str, opset: int = 13, dynamic_batch: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Build a registered architecture and export it with its registered input shape."""
    return export(build(name, seed), INPUT_SHAPES[name], opset=opset, dynamic_batch=dynamic_batch)
