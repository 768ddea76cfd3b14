"""The EfficientNet network (V1 and V2): stem, MBConv / Fused-MBConv blocks, head, dropout,
classifier.

    model = EfficientNet("b3", num_classes=10)
    feats = model.forward_features(x)      # (N, head_channels, H/32, W/32)
    logits = model.forward_head(feats)

Plain PyTorch: nothing here knows about Lightning.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from effnet_lightning.models.layers import ConvBNAct, make_block
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.provenance import BuildOptions, Provenance
from effnet_lightning.models.scaling import DROP_PATH_RATE, Variant, build_architecture, drop_path_rates, get_variant


class EfficientNet(nn.Module):
    """EfficientNet / EfficientNet-Lite built from a variant's scaling coefficients.

    Args:
        variant: name (b0-b8, l2, lite0-lite4, v2-b0 to v2-b3, v2-s/m/l/xl, phi<x>) or a
            `scaling.Variant`.
        num_classes: classifier outputs; 0 leaves the pooled features (no classifier).
        options: the structural settings (`BuildOptions`: padding, BatchNorm eps/momentum,
            activation, squeeze-and-excitation, input channels); keyword arguments of the same
            names override single fields: `EfficientNet("b0", padding="same")`.
        dropout: before the classifier; default the variant's.
        drop_path_rate: stochastic depth at the last block, ramped linearly from 0.
        lean_bn_act: in training, BatchNorm + SiLU store only the conv output and recompute
            the rest in backward: less memory, same numbers and state_dict.
        zero_init_residual: start each residual branch's last BatchNorm scale at zero, so that
            every block begins as the identity (see `reset_parameters`). Pretrained weights
            replace it; from scratch on small data, the network learns from the first epochs
            instead of staying near chance for a dozen.

    `provenance` says where the weights came from and what input they expect; `create_model`
    declares it for pretrained weights.
    """

    def __init__(
        self,
        variant: str | Variant = "b0",
        num_classes: int = 1000,
        options: BuildOptions | None = None,
        dropout: float | None = None,
        drop_path_rate: float = DROP_PATH_RATE,
        lean_bn_act: bool = False,
        zero_init_residual: bool = True,
        **option_overrides,
    ):
        super().__init__()
        self.variant = get_variant(variant)
        options = replace(options or BuildOptions(), **option_overrides)
        if num_classes < 0 or options.in_channels < 1:
            raise ValueError(f"num_classes must be >= 0 and in_channels >= 1, got {num_classes}, {options.in_channels}")
        arch = build_architecture(self.variant, se=options.se)
        activation = options.activation or ("relu6" if self.variant.lite else "swish")
        self.dropout_rate = self.variant.dropout if dropout is None else dropout
        conv = {
            "activation": activation,
            "padding": options.padding,
            "bn_eps": options.bn_eps,
            "bn_momentum": options.bn_momentum,
            "lean_bn_act": lean_bn_act,
        }
        in_channels = options.in_channels

        self.stem = ConvBNAct(in_channels, arch.stem_channels, 3, stride=2, **conv)
        rates = drop_path_rates(len(arch.blocks), drop_path_rate)
        self.blocks = nn.Sequential(
            *[make_block(cfg, drop_path_rate=rate, **conv) for cfg, rate in zip(arch.blocks, rates)]
        )
        self.head = ConvBNAct(arch.blocks[-1].out_channels, arch.head_channels, 1, **conv)
        self.num_features = arch.head_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.provenance = Provenance(variant_preprocessing(self.variant), options)
        self.zero_init_residual = zero_init_residual
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (conv kaiming-normal fan_out, BN 1/0, linear
        U(+-1/sqrt(out))), with `zero_init_residual` the scale of each residual branch's last
        BatchNorm at 0 (Goyal et al., 2017): each block starts as the identity. Without it the
        residual sums add up variance from the first step, and B0 on 1,000 images of 64 px stays
        near chance for a dozen epochs (docs/from-scratch.md has the curves)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                _init_linear(m)
        if self.zero_init_residual:
            for block in self.blocks:
                if block.has_residual:
                    nn.init.zeros_(block.last_bn().weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def block_groups(self) -> list[list[nn.Module]]:
        """The backbone in groups, from the input up: the stem; the blocks of each row of the
        architecture's block table (blocks of one kernel, expansion and width; seven rows for B0
        and Lite0); the head convolution. Fine-tuning unfreezes the groups and decays their
        learning rates one group at a time."""
        rows: dict[int, list[nn.Module]] = {}
        for block in self.blocks:
            rows.setdefault(block.cfg.row, []).append(block)
        return [[self.stem], *rows.values(), [self.head]]

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised classifier with `num_classes` outputs (0: none)."""
        self.num_classes = num_classes
        self.provenance = self.provenance.without_head()
        device = next(self.parameters()).device
        self.classifier = nn.Linear(self.num_features, num_classes, device=device) if num_classes else nn.Identity()
        if num_classes:
            _init_linear(self.classifier)


def variant_preprocessing(variant: Variant) -> Preprocessing:
    """The input a variant trains and evaluates at without weights that say otherwise:
    ImageNet's statistics, its training size as the crop and, for EfficientNetV2, its larger
    evaluation size as the test size."""
    pre = Preprocessing.for_resolution(variant.train_resolution or variant.resolution)
    return replace(pre, test_size=variant.resolution) if variant.train_resolution else pre


def _init_linear(m: nn.Linear) -> None:
    bound = 1.0 / math.sqrt(m.out_features)
    nn.init.uniform_(m.weight, -bound, bound)
    nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, resolution: int, in_channels: int | None = None) -> float:
    """Multiply-adds (the paper's "FLOPs") of one image at `resolution`, counted by running
    the model under `torch.utils.flop_counter`."""
    from torch.utils.flop_counter import FlopCounterMode

    if in_channels is None:
        in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, resolution, resolution, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
