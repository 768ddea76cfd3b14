"""Resolution-aware transforms: training crops and augmentation, MixUp / CutMix batches, and
the evaluation resize and centre crop, all sized by a `Preprocessing`."""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from effnet_lightning.models.preprocessing import Preprocessing

Augment = Literal["none", "autoaugment", "randaugment", "trivialaugment"]


def train_transform(
    pre: Preprocessing,
    augment: str = "none",
    crop_scale=(0.08, 1.0),
    random_erasing: float = 0.0,
    randaugment_magnitude: int = 9,
) -> v2.Compose:
    """Random-resized crop and flip, then `augment` (autoaugment: the ImageNet policy,
    randaugment: 2 ops at `randaugment_magnitude`, trivialaugment: TrivialAugment Wide) on uint8
    images, normalisation, and random erasing with probability `random_erasing`."""
    interpolation = v2.InterpolationMode(pre.interpolation)
    crop = v2.RandomResizedCrop(pre.crop_size, scale=tuple(crop_scale), interpolation=interpolation, antialias=True)
    ops = [v2.ToImage(), crop, v2.RandomHorizontalFlip()]
    geometric = v2.InterpolationMode.BILINEAR  # the policies' rotate / shear / translate (no bicubic on tensors)
    if augment == "autoaugment":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=geometric))
    elif augment == "randaugment":
        ops.append(v2.RandAugment(magnitude=int(randaugment_magnitude), interpolation=geometric))
    elif augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide(interpolation=geometric))
    elif augment != "none":
        raise ValueError(f"unknown augment {augment!r}: choose none, autoaugment, randaugment or trivialaugment")
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    if random_erasing:
        ops.append(v2.RandomErasing(p=random_erasing, value=0))  # 0: the mean, after normalisation
    return v2.Compose(ops)


class MixCollate:
    """Collates a batch, then applies MixUp or CutMix (one of them, chosen per batch, when both
    are on): targets become class probabilities that sum to 1 per sample, or, for `multilabel`
    targets (multi-hot vectors), the same mix of the two images' vectors. Samples that carry
    their augmentation seed, (image, label, seed), are mixed from a generator seeded by the
    first one's: the batch's mixing then does not depend on the process or the restart."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, multilabel: bool = False):
        if multilabel:
            self.mix = MultiHotMix(mixup_alpha, cutmix_alpha)
            return
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, samples):
        if len(samples[0]) == 3:
            seed = samples[0][2]
            images, targets = default_collate([sample[:2] for sample in samples])
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((seed + 1) % 2**63)  # not the first sample's own stream
                return self.mix(images, targets)
        images, targets = default_collate(samples)
        return self.mix(images, targets)


class MultiHotMix:
    """MixUp or CutMix of a batch with multi-hot targets (torchvision's take class indices):
    each image mixed with the next one in the batch (the last with the first), its target
    the same mix of the two targets; lambda from Beta(alpha, alpha), for CutMix the share of the
    image left uncut."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float):
        self.alphas = [("mixup", mixup_alpha)] * (mixup_alpha > 0) + [("cutmix", cutmix_alpha)] * (cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, alpha = self.alphas[int(torch.randint(len(self.alphas), ()))]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = images.roll(1, 0)
        if kind == "mixup":
            images = images * lam + other * (1 - lam)
        else:
            height, width = images.shape[-2:]
            cut_h, cut_w = round(height * (1 - lam) ** 0.5), round(width * (1 - lam) ** 0.5)
            y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
            top, bottom = max(y - cut_h // 2, 0), min(y + cut_h // 2, height)
            left, right = max(x - cut_w // 2, 0), min(x + cut_w // 2, width)
            images = images.clone()
            images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        return images, targets * lam + targets.roll(1, 0) * (1 - lam)


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the short side to resize_size (both sides for crop_mode "squash"), centre-crop
    crop_size, normalise: `eval_crop` then `eval_normalize`."""
    return v2.Compose([*eval_crop(pre).transforms, *eval_normalize(pre).transforms])


def eval_crop(pre: Preprocessing) -> v2.Compose:
    """The evaluation resize and centre crop: an image -> a (3, crop, crop) uint8 tensor."""
    size = (pre.resize_size, pre.resize_size) if pre.crop_mode == "squash" else pre.resize_size
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, interpolation=v2.InterpolationMode(pre.interpolation), antialias=True),
            v2.CenterCrop(pre.crop_size),
        ]
    )


def eval_normalize(pre: Preprocessing) -> v2.Compose:
    """A uint8 image tensor -> float32 in [0, 1], normalised by the mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])
