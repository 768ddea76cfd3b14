"""Building blocks of EfficientNet: conv-BN-activation, squeeze-and-excitation, stochastic
depth, the MBConv block and EfficientNetV2's Fused-MBConv. Blocks receive final integer sizes
from `scaling`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effnet_lightning.models.batchnorm_act import batch_norm_silu, can_fuse
from effnet_lightning.models.scaling import BlockConfig

PADDINGS = ("symmetric", "same")
ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}") from None


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow's SAME padding: the odd extra pixel goes bottom/right.

    Needed only where it differs from symmetric padding, i.e. strided convolutions; weights
    ported from TensorFlow reproduce only with it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with SAME's padding for this convolution added."""
        pad_h = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


def same_padding(size: int, kernel_size: int, stride: int) -> int:
    """Total padding TensorFlow's SAME adds along one axis."""
    return max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: choose one of {', '.join(PADDINGS)}")
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)
    # For stride 1 and an odd kernel, SAME and symmetric padding are the same thing.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation (Identity for none).

    `lean_bn_act`: in training, BatchNorm and SiLU store only the conv output for backward
    (see `batchnorm_act`); the same modules and numbers, less activation memory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "swish",
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        lean_bn_act: bool = False,
    ):
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel_size, stride, groups, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(activation) if activation else nn.Identity()
        self.lean_bn_act = lean_bn_act and isinstance(self.act, nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.lean_bn_act and self.training and not torch.jit.is_scripting():
            return self._lean_bn_act(x)
        return self.act(self.bn(x))

    @torch.jit.unused  # a Python autograd function: neither scripted nor traced
    def _lean_bn_act(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and can_fuse(self.bn, x):
            return batch_norm_silu(x, self.bn)
        return self.act(self.bn(x))


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 reduce -> activation -> 1x1 expand -> sigmoid.

    `inplace` (the inference form sets it): gate `x` in place instead of allocating the output.
    """

    def __init__(self, channels: int, se_channels: int, activation: str = "swish"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, se_channels, 1)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(se_channels, channels, 1)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))).sigmoid()
        return x.mul_(scale) if self.inplace else x * scale


class DropPath(nn.Module):
    """Stochastic depth: in training, drop the whole residual branch per sample with
    probability `rate` and scale survivors by 1 / (1 - rate); identity in eval."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class Block(nn.Module):
    """What MBConv and Fused-MBConv share: the output is the 1x1 projection (`project`) of the
    expanded map (`expanded`), plus the input through stochastic depth where the block keeps the
    shape. Subclasses build `project` and define `expanded`."""

    def __init__(self, cfg: BlockConfig, drop_path_rate: float):
        super().__init__()
        self.cfg = cfg
        self.has_residual = cfg.has_residual
        # Blocks without a residual have no stochastic depth (there is no branch to drop).
        self.drop_path = DropPath(drop_path_rate) if self.has_residual and drop_path_rate > 0 else nn.Identity()
        self.inplace = False  # the inference form sets it: the residual sum overwrites the branch's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_from(self.expanded(x), x)

    def project_from(self, expanded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The block's output from its expanded map and its input; the residual sum in place in
        the inference form (`inplace`), where the projection's output is the block's own tensor."""
        out = self.project(expanded)
        if self.has_residual:
            out = self.drop_path(out)
            out = out.add_(x) if self.inplace else out + x
        return out


class MBConv(Block):
    """Mobile inverted bottleneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project,
    with a residual (and stochastic depth) when the shape is kept."""

    def __init__(
        self,
        cfg: BlockConfig,
        drop_path_rate: float = 0.0,
        activation: str = "swish",
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        lean_bn_act: bool = False,
    ):
        super().__init__(cfg, drop_path_rate)
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "lean_bn_act": lean_bn_act}
        hidden = cfg.hidden_channels
        self.expand = (
            ConvBNAct(cfg.in_channels, hidden, 1, activation=activation, **bn)
            if cfg.expand_ratio != 1
            else nn.Identity()
        )
        self.dw = ConvBNAct(
            hidden, hidden, cfg.kernel_size, cfg.stride, groups=hidden, activation=activation, padding=padding, **bn
        )
        self.se = SqueezeExcite(hidden, cfg.se_channels, activation) if cfg.se_channels else nn.Identity()
        self.project = ConvBNAct(hidden, cfg.out_channels, 1, activation=None, **bn)

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """The expanded map: after the depthwise convolution and SE, the 1x1 projection's input."""
        return self.se(self.dw(self.expand(x)))

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm that ends the residual branch (zeroed by `zero_init_residual`)."""
        return self.project.bn


class FusedMBConv(Block):
    """EfficientNetV2's Fused-MBConv: a kxk convolution that expands (in place of MBConv's 1x1
    expansion and kxk depthwise convolution) -> 1x1 project; without expansion, the kxk
    convolution alone, to the output channels. No squeeze-and-excitation; a residual (and
    stochastic depth) when the shape is kept. The same interface as `MBConv`."""

    def __init__(
        self,
        cfg: BlockConfig,
        drop_path_rate: float = 0.0,
        activation: str = "swish",
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        lean_bn_act: bool = False,
    ):
        super().__init__(cfg, drop_path_rate)
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "lean_bn_act": lean_bn_act}
        hidden = cfg.hidden_channels
        self.conv = ConvBNAct(
            cfg.in_channels, hidden, cfg.kernel_size, cfg.stride, activation=activation, padding=padding, **bn
        )
        self.project = (
            ConvBNAct(hidden, cfg.out_channels, 1, activation=None, **bn) if cfg.expand_ratio != 1 else nn.Identity()
        )

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """The expanded map: the kxk convolution's output (the block's output without expansion)."""
        return self.conv(x)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv.bn if self.cfg.expand_ratio == 1 else self.project.bn


def make_block(cfg: BlockConfig, **kwargs) -> Block:
    return FusedMBConv(cfg, **kwargs) if cfg.fused else MBConv(cfg, **kwargs)
