"""The W&B validation report's parts: which samples it picks and the pictures it draws."""

import itertools

import numpy as np
import torch

from effnet_lightning.callbacks.wandb_validation_report import WandbValidationReport


def test_samples_are_spread_over_the_batches():
    counts = [WandbValidationReport.samples_in_batch(b, 40, 16) for b in range(40)]
    chosen = [b for b, n in enumerate(counts) if n]
    assert sum(counts) == 16 and max(counts) == 1
    assert chosen[0] < 40 / 16 and chosen[-1] >= 40 - 40 / 16  # from the start to the end, 2.5 batches apart
    assert {b - a for a, b in itertools.pairwise(chosen)} == {2, 3}
    counts = [WandbValidationReport.samples_in_batch(b, 9, 16) for b in range(9)]
    assert sum(counts) == 16 and set(counts) == {1, 2}
    assert sum(WandbValidationReport.samples_in_batch(b, float("inf"), 4) for b in range(100)) == 4
    assert WandbValidationReport.samples_in_batch(0, 5, 0) == 0


def test_picks_prefer_classes_not_shown_yet():
    labels = [3, 3, 3, 3, 3, 3, 7, 7]
    assert WandbValidationReport.pick(labels, 2, set()) == [1, 6]  # evenly spaced would be two 3s
    assert WandbValidationReport.pick(labels, 1, {3}) == [6]
    assert WandbValidationReport.pick(labels, 3, {3, 7}) == [1, 3, 6]  # all shown: evenly spaced
    assert sorted(WandbValidationReport.pick([0, 1], 5, set())) == [0, 1]  # never more than the batch


def test_pictures_are_uint8_pixels_of_the_normalised_images():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)
    pixels = torch.randint(0, 256, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    normalised = (pixels / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    pictures = WandbValidationReport.to_uint8(normalised, mean, std)
    assert [(p.shape, p.dtype) for p in pictures] == [((4, 5, 3), np.uint8)] * 2
    assert np.array_equal(np.stack(pictures), pixels.permute(0, 2, 3, 1).numpy())
