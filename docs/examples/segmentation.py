"""EfficientNet-Lite0 as the backbone of a small segmentation network: its maps at reductions 4
to 32 under torchvision's FeaturePyramidNetwork, a 3x3 head on the finest level, trained for a
few hundred steps on generated images of shapes (background, disc, square, triangle) with their
masks, then scored by mean IoU on held-back images against predicting the majority class.

    python docs/examples/segmentation.py --steps 300

The backbone starts from the packaged ImageNet weights and keeps its BatchNorm statistics frozen
(small batches, as in detection). Everything else is plain PyTorch: copy it into your project.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from effnet_lightning import create_model

CLASSES = ("background", "disc", "square", "triangle")


def shapes(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images (RGB in [0, 1]) of 1-3 shapes of random colour on a noisy background of random
    colour, and their masks (the class of each pixel; later shapes cover earlier ones)."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = torch.rand(n, 3, 1, 1, generator=generator) * 0.6 + 0.2 * torch.rand(n, 3, size, size, generator=generator)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            kind = int(torch.randint(1, len(CLASSES), (1,), generator=generator))
            r = float(torch.empty(1).uniform_(size / 10, size / 5, generator=generator))
            cy, cx = (float(v) for v in torch.empty(2).uniform_(r, size - r, generator=generator))
            if kind == 1:
                inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2
            elif kind == 2:
                inside = ((ys - cy).abs() <= r) & ((xs - cx).abs() <= r)
            else:  # pointing up: below the apex, within the widening sides
                inside = (ys <= cy + r) & ((xs - cx).abs() <= (ys - (cy - r)) / 2)
            images[i][:, inside] = torch.rand(3, 1, generator=generator)
            masks[i][inside] = kind
    return images, masks


class Segmenter(nn.Module):
    """Backbone maps -> FPN -> a 3x3 head on the finest level -> class scores at input size."""

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 64):
        super().__init__()
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), width)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        pyramid = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return F.interpolate(self.head(pyramid["0"]), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.backbone.modules():  # frozen BatchNorm statistics in the backbone
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def mean_iou(predicted: torch.Tensor, masks: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """The IoU of each class over all pixels of the set, and their mean."""
    ious = []
    for c in range(num_classes):
        union = ((predicted == c) | (masks == c)).sum()
        ious.append(float(((predicted == c) & (masks == c)).sum() / union) if union else 1.0)
    return sum(ious) / num_classes, ious


def main(steps: int = 300, seed: int = 0, size: int = 64, batch_size: int = 16) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backbone = create_model("lite0", weights="imagenet", features_only=True, out_indices=(1, 2, 3, 4))
    pre = backbone.provenance.preprocessing
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    model = Segmenter(backbone, len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        images, masks = shapes(batch_size, size, generator)
        loss = F.cross_entropy(model((images - mean) / std), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    images, masks = shapes(64, size, torch.Generator().manual_seed(seed + 10_000))  # held back
    model.eval()
    with torch.no_grad():
        predicted = model((images - mean) / std).argmax(1)
    miou, per_class = mean_iou(predicted, masks, len(CLASSES))
    majority = int(masks.flatten().mode().values)
    baseline, _ = mean_iou(torch.full_like(masks, majority), masks, len(CLASSES))
    return {"mean_iou": miou, "per_class_iou": dict(zip(CLASSES, per_class)), "majority_baseline": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = main(args.steps, args.seed)
    print(f"mean IoU {result['mean_iou']:.3f} (majority class: {result['majority_baseline']:.3f})")
    print(", ".join(f"{name} {iou:.3f}" for name, iou in result["per_class_iou"].items()))
