"""The inference form of a trained network: BatchNorm folded into the convolution before it.

    fast = fold_batchnorm(model)          # a folded copy in eval mode; `model` is untouched

Each `ConvBNAct` (conv -> BatchNorm -> activation) becomes conv-with-bias -> activation, module
by module, so it works for SAME padding (whose amount depends on the input size, which is why
graph tracing cannot fold these networks) and leaves the network's structure otherwise as it
is. The activations, the squeeze-and-excitation gates and the residual sums then work in place,
on tensors the network itself made (never its input): eager CPU inference is bound by memory
traffic, and a fresh output per elementwise step costs as much as the step. On a CPU, each
conv -> activation pair then runs as one oneDNN convolution with the activation applied to its
output as it is written (`FoldedConvAct`), saving one more pass over every activation map.
Only for evaluation, without gradients: the folded network has no running statistics to train.

    logits = in_chunks(fast, images)      # on a CPU, large images go through in cache-sized slices
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from effnet_lightning.compat import fused_conv_activation
from effnet_lightning.models.efficientnet import EfficientNet
from effnet_lightning.models.layers import Conv2dSame, ConvBNAct

# oneDNN's convolution with a fused activation (input, weight, bias, padding, stride, dilation,
# groups, activation, its scalars, algorithm). Missing (a build without oneDNN), the folded
# network runs conv then activation.
_CONV_ACT = fused_conv_activation()
_ONEDNN_ACTIVATIONS = {nn.SiLU: ("swish", []), nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


class FoldedConvAct(nn.Module):
    """A folded `ConvBNAct`: conv with bias -> activation, as one oneDNN call for float32 CPU
    tensors in eager mode; otherwise (CUDA, autocast, torch.compile, tracing) the two modules,
    the same numbers to float32 rounding."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.act = conv, act
        self.onednn = ("none", []) if isinstance(act, nn.Identity) else _ONEDNN_ACTIVATIONS.get(type(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            conv, (attr, scalars) = self.conv, self.onednn
            padding = list(conv.padding)
            if isinstance(conv, Conv2dSame):
                x, padding = conv.pad(x), [0, 0]
            args = (padding, list(conv.stride), list(conv.dilation), conv.groups)
            return _CONV_ACT(x, conv.weight, conv.bias, *args, attr, scalars, "")
        return self.act(self.conv(x))

    def _fused(self, x: torch.Tensor) -> bool:
        return (
            _CONV_ACT is not None
            and self.onednn is not None
            and x.device.type == "cpu"
            and x.dtype == self.conv.weight.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        )


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
    for parent in list(folded.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ConvBNAct) and isinstance(child.bn, nn.BatchNorm2d):
                fold_conv_bn(child.conv, child.bn)
                setattr(parent, name, FoldedConvAct(child.conv, child.act))
    for module in folded.modules():
        if hasattr(module, "inplace"):  # activations, SqueezeExcite, MBConv (and Dropout, an identity in eval)
            module.inplace = True
    folded.requires_grad_(False)
    folded.provenance = folded.provenance.folded()
    return folded


# Pixels per slice of a batch in CPU inference (`in_chunks`): 5 images at 224 px, 2 at 380.
# Measured on a 2-core EPYC with a 32 MB L3 cache (folded B0 / Lite0 at 224 and 256 px, B3 at
# 300, B4 at 380, batch 16 or less), slices of about this size ran 1.0-1.6x the whole batch's
# speed; at 128 px, slices of 16 were as fast as the whole batch of 32, and smaller ones slower.
CHUNK_PIXELS = 256 * 1024


def in_chunks(network, images: torch.Tensor) -> torch.Tensor:
    """`network(images)`; without gradients on a CPU, in slices of the batch of about
    `CHUNK_PIXELS` pixels each. Eager CPU inference is bound by memory traffic: a slice keeps the
    largest activation maps in cache (at 224 px, B0's widest one is 4.8 MB an image), where the
    whole batch would stream them through memory. The logits are the same to float32 rounding."""
    if images.device.type == "cpu" and not torch.is_grad_enabled() and images.dim() == 4:
        per_slice = max(1, round(CHUNK_PIXELS / (images.shape[-2] * images.shape[-1])))
        if images.shape[0] > per_slice:
            return torch.cat([network(part) for part in images.split(per_slice)])
    return network(images)
