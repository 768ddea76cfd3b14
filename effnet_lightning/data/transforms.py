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
    are on): targets become class probabilities that sum to 1 per sample. Samples that carry
    their augmentation seed, (image, label, seed), are mixed from a generator seeded by the
    first one's: the batch's mixing then does not depend on the process or the restart."""

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float):
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
