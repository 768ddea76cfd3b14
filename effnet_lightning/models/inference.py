"""The inference form of a trained network: BatchNorm folded into the convolution before it.

    fast = fold_batchnorm(model)          # a folded copy in eval mode; `model` is untouched

Each `ConvBNAct` (conv -> BatchNorm -> activation) becomes conv-with-bias -> activation, module
by module, so it works for SAME padding (whose amount depends on the input size, which is why
graph tracing cannot fold these networks) and leaves the network's structure otherwise as it
is. The activations, the squeeze-and-excitation gates and the residual sums then work in place,
on tensors the network itself made (never its input): eager CPU inference is bound by memory
traffic, and a fresh output per elementwise step costs as much as the step. Only for
evaluation, without gradients: the folded network has no running statistics to train.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from effnet_lightning.models.efficientnet import EfficientNet
from effnet_lightning.models.layers import ConvBNAct


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv(x) -> bn(conv(x)) in eval mode, in place: w' = w * g / s, b' = beta + (b - mean) * g / s
    with s = sqrt(running_var + eps)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter((bn.bias + (bias - bn.running_mean) * scale).to(conv.weight.dtype))


def fold_batchnorm(model: EfficientNet) -> EfficientNet:
    """A copy of `model` in eval mode with every BatchNorm folded into its convolution, on the
    same device and memory format; its provenance says `form="folded"`."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
        if hasattr(module, "inplace"):  # activations, SqueezeExcite, MBConv (and Dropout, an identity in eval)
            module.inplace = True
    folded.requires_grad_(False)
    folded.provenance = folded.provenance.folded()
    return folded
