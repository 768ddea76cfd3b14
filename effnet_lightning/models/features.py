"""EfficientNet as a backbone: the feature maps at reductions 2, 4, 8, 16 and 32.

    backbone = create_model("b0", weights="imagenet", features_only=True, out_indices=(1, 2, 3, 4))
    maps = backbone(images)                      # [N x 24 x H/4 x W/4, ..., N x 320 x H/32 x W/32]
    backbone.feature_info.channels()             # [24, 40, 112, 320]
    backbone.feature_info.reduction()            # [4, 8, 16, 32]

Level i is the output of the last block at reduction 2^(i+1): the end of a row of the block
table that the next row downsamples (for B0 blocks 0, 2, 4, 10 and 15, after rows 0, 1, 2, 4
and 6). With `feature_location="expansion"` (EfficientDet's choice) it is that block's expanded
map instead: after its depthwise convolution and SE, before the 1x1 projection. The same levels,
channels and reductions as timm's `features_only` networks.

Plain PyTorch: nothing here knows about Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effnet_lightning.models.efficientnet import EfficientNet

FEATURE_LOCATIONS = ("block", "expansion")


@dataclass(frozen=True)
class FeatureLevel:
    channels: int
    reduction: int
    module: str  # the block whose output (or expanded map) it is
    block: int  # its index in `blocks`


class FeatureInfo:
    """The chosen levels, in order: channels, reduction and module name of each (timm's
    `feature_info` interface, which segmentation and detection libraries read)."""

    def __init__(self, levels: list[FeatureLevel]):
        self.levels = levels

    def channels(self) -> list[int]:
        return [level.channels for level in self.levels]

    def reduction(self) -> list[int]:
        return [level.reduction for level in self.levels]

    def module_name(self) -> list[str]:
        return [level.module for level in self.levels]

    def __len__(self) -> int:
        return len(self.levels)


def feature_levels(network: EfficientNet, location: str = "block") -> list[FeatureLevel]:
    """Every level of `network`: the last block at each reduction, from 2 to 32."""
    if location not in FEATURE_LOCATIONS:
        raise ValueError(f"feature_location must be one of {', '.join(FEATURE_LOCATIONS)}, got {location!r}")
    levels, reduction = [], 2  # the stem halves the input
    blocks = list(network.blocks)
    for i, block in enumerate(blocks):
        reduction *= block.cfg.stride
        if i + 1 == len(blocks) or blocks[i + 1].cfg.stride > 1:
            channels = block.cfg.hidden_channels if location == "expansion" else block.cfg.out_channels
            levels.append(FeatureLevel(channels, reduction, f"blocks.{i}", i))
    return levels


def chosen_levels(network: EfficientNet, out_indices, location: str = "block") -> list[FeatureLevel]:
    """The levels `out_indices` names (increasing indices into the levels at reductions 2-32)."""
    levels = feature_levels(network, location)
    out_indices = tuple(out_indices)
    if (
        not out_indices
        or list(out_indices) != sorted(set(out_indices))
        or not 0 <= out_indices[0] <= out_indices[-1] < len(levels)
    ):
        raise ValueError(
            f"out_indices must be increasing indices of the {len(levels)} levels (0-{len(levels) - 1}: reductions "
            f"{', '.join(str(level.reduction) for level in levels)}), got {out_indices}"
        )
    return [levels[i] for i in out_indices]


def unused_by_features(network: EfficientNet, out_indices, location: str = "block") -> tuple[str, ...]:
    """The modules of `network` (as state-dict prefixes) a backbone with these levels leaves out:
    the head, the classifier and the blocks after the deepest level. Weights need not hold them."""
    last = chosen_levels(network, out_indices, location)[-1].block
    return ("head.", "classifier.", *(f"blocks.{i}." for i in range(last + 1, len(network.blocks))))


class EfficientNetFeatures(nn.Module):
    """The stem and blocks of an EfficientNet, returning the maps of `out_indices` (indices into
    the levels at reductions 2, 4, 8, 16, 32) as a list, shallowest first. The head convolution
    and classifier are left out; blocks after the deepest chosen level are not run. Its
    `state_dict` keeps the network's names (`stem.*`, `blocks.<i>.*`)."""

    def __init__(self, network: EfficientNet, out_indices=(0, 1, 2, 3, 4), feature_location: str = "block"):
        super().__init__()
        self.feature_info = FeatureInfo(chosen_levels(network, out_indices, feature_location))
        self.variant = network.variant
        self.provenance = network.provenance
        self.out_indices = tuple(out_indices)
        self.feature_location = feature_location
        self.stem = network.stem
        last = self.feature_info.levels[-1].block
        self.blocks = nn.Sequential(*list(network.blocks)[: last + 1])
        self._taps = {level.block for level in self.feature_info.levels}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.blocks):
            if i in self._taps and self.feature_location == "expansion":
                expanded = block.expanded(x)
                maps.append(expanded)
                x = block.project_from(expanded, x)
                continue
            x = block(x)
            if i in self._taps:
                maps.append(x)
        return maps
