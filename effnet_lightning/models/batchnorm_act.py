"""BatchNorm followed by SiLU in training that stores one tensor instead of two for backward.

Plain `silu(batch_norm(x))` keeps x (for BatchNorm's backward) and the normalised tensor (for
SiLU's backward): two tensors of the full activation size. `batch_norm_silu` keeps only x and
the per-channel statistics, and recomputes the normalised tensor in backward (one fused
multiply-add per element). The numbers, the running-statistics update and the parameters are
BatchNorm's own; `ConvBNAct` calls it only in training with gradients, so evaluation, tracing,
scripting and every export see plain BatchNorm and SiLU modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _BatchNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        normalised, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return F.silu(normalised, inplace=True)  # the normalised tensor is not kept

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        channel = (1, -1, 1, 1)
        scale = invstd * weight
        normalised = torch.addcmul((bias - mean * scale).view(channel), x, scale.view(channel))
        grad_normalised = torch.ops.aten.silu_backward(grad, normalised)
        del normalised
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_normalised, x, weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3])
        )
        return grad_x, grad_weight, grad_bias, None, None, None, None


def can_fuse(bn: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    """Plain BatchNorm2d (not SyncBatchNorm, whose statistics span processes) in training, with
    a fixed momentum, affine, in the parameters' dtype (autocast and cumulative-average
    BatchNorm take the plain path)."""
    return (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and x.dtype == bn.weight.dtype
        and torch.is_grad_enabled()
    )


def batch_norm_silu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """silu(bn(x)) in training, storing only x for backward."""
    bn.num_batches_tracked.add_(1)
    return _BatchNormSiLU.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
