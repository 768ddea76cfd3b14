"""Optimizers and learning-rate schedules for EfficientNet training.

- `param_groups`: no weight decay on BatchNorm and bias parameters; the backbone's learning-rate
  scales (a lower rate for the backbone, layer-wise decay across its block groups).
- `RMSpropTF`: RMSProp as TensorFlow computes it (the paper's optimizer).
- `scale_lr`: the linear scaling rule for the global batch.
- `lr_lambda`: linear warm-up, then cosine or the paper's step-exponential decay.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "rmsprop_tf")
SCHEDULES = ("cosine", "step", "constant")
Optimizer = Literal["sgd", "adamw", "rmsprop_tf"]
Schedule = Literal["cosine", "step", "constant"]


def param_groups(
    model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0, layer_decay: float = 1.0
) -> list[dict]:
    """Conv / linear weights with weight decay; BN and bias parameters without. With a
    `backbone_lr_scale` or a `layer_decay` other than 1, the classifier gets groups of its own
    and the backbone's groups carry `lr_scale` (their learning rate is lr x scale): the block
    group next to the classifier (`model.block_groups()`, the head convolution)
    `backbone_lr_scale`, each group below it `layer_decay` times the one above. Frozen
    parameters are left out."""
    scales: dict[int, float] = {}  # id(parameter) -> lr_scale; empty: one learning rate for all
    if backbone_lr_scale != 1 or layer_decay != 1:
        for depth, modules in enumerate(reversed(model.block_groups())):
            for module in modules:
                scales.update({id(p): backbone_lr_scale * layer_decay**depth for p in module.parameters()})
        head = {id(p) for p in model.get_classifier().parameters()}
        scales.update(
            {id(p): backbone_lr_scale for p in model.parameters() if id(p) not in scales and id(p) not in head}
        )
    buckets: dict[tuple[float | None, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((scales.get(id(p)), p.ndim > 1), []).append(p)
    result = []
    for scale in [None, *sorted({s for s, _ in buckets if s is not None}, reverse=True)]:
        for decays in (True, False):
            params = buckets.get((scale, decays))
            if params or not scales:  # the plain two groups always exist
                group = {"params": params or [], "weight_decay": weight_decay if decays else 0.0}
                if scale is not None:
                    group["lr_scale"] = scale
                result.append(group)
    return result


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow's arithmetic: epsilon inside the square root, the mean square
    initialised to one, and momentum applied to the lr-scaled step.

    TF: ms = rho * ms + (1 - rho) * g^2; mom = momentum * mom + lr * g / sqrt(ms + eps); w -= mom.
    `weight_decay` adds wd * w to the gradient (L2 regularisation, as the TF recipe does).
    """

    def __init__(
        self,
        params,
        lr: float = 0.016,
        alpha: float = 0.9,
        eps: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or not 0 <= alpha < 1 or eps <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} alpha={alpha} eps={eps} momentum={momentum}")
        super().__init__(
            params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                square_avg, buf = state["square_avg"], state["momentum_buffer"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                step = grad / (square_avg + group["eps"]).sqrt()
                buf.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                p.sub_(buf)
        return loss


def make_optimizer(
    name: str, groups: list[dict], lr: float, momentum: float, nesterov: bool = True
) -> torch.optim.Optimizer:
    """`lr` for every group, times the group's `lr_scale` where it has one."""
    groups = [{**g, "lr": lr * g["lr_scale"]} if "lr_scale" in g else g for g in groups]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def scale_lr(lr: float, base_batch: int, batch: int, world_size: int = 1, accumulate: int = 1) -> tuple[float, int]:
    """The linear scaling rule: (lr x global batch / base_batch, global batch), where the global
    batch is the per-device batch x devices (all nodes) x gradient-accumulation steps."""
    global_batch = batch * world_size * accumulate
    return lr * global_batch / base_batch, global_batch


def lr_lambda(
    schedule: str,
    total_steps: int,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    decay_rate: float = 0.97,
    decay_epochs: float = 2.4,
    min_lr_ratio: float = 0.0,
):
    """Multiplier of the base learning rate at an optimizer step (for `LambdaLR`).

    Warm-up rises linearly from 1/warmup_steps to 1. Then `cosine` anneals to `min_lr_ratio`
    by the last step, `step` multiplies by `decay_rate` every `decay_epochs` epochs (counted
    from the start, as TF does), `constant` stays at 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    warmup_steps = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "step":
            return decay_rate ** math.floor(step / (decay_epochs * steps_per_epoch))
        return 1.0

    return factor
