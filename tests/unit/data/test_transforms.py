"""MixUp and CutMix targets; the evaluation resize of either crop mode."""

import math

import pytest
import torch

from effnet_lightning.data.datamodule import MixCollate
from effnet_lightning.data.transforms import eval_transform
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.training.module import EfficientNetModule


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_targets_sum_to_one_and_the_loss_takes_them(mixup, cutmix):
    torch.manual_seed(0)
    collate = MixCollate(num_classes=5, mixup_alpha=mixup, cutmix_alpha=cutmix)
    samples = [(torch.rand(3, 32, 32), label) for label in [0, 1, 2, 3, 4, 0, 1, 2]]
    images, targets = collate(samples)
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, 5)
    assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets >= 0).all()
    assert not torch.equal(targets, torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), 5).float())
    module = EfficientNetModule("b0", num_classes=5, label_smoothing=0.1).train()
    out = module.model_step((images, targets), "train")
    logits = module(images)  # zero head: uniform predictions, so the loss is log(5) whatever the targets
    assert torch.allclose(logits, torch.zeros_like(logits)) and out["loss"].item() == pytest.approx(
        math.log(5), abs=1e-5
    )
    module.model.classifier.weight.data.normal_()
    module.eval()  # no dropout: the same logits twice
    with torch.no_grad():
        logp = module(images).log_softmax(1)
        loss = module.model_step((images, targets), "train")["loss"].item()
    smoothed = targets * 0.9 + 0.1 / 5  # label smoothing on top of the mixed targets
    assert loss == pytest.approx(float(-(smoothed * logp).sum(1).mean()), abs=1e-5)


def test_squash_resizes_both_sides_and_center_keeps_the_aspect_ratio():
    wide = torch.zeros(3, 40, 120, dtype=torch.uint8)
    wide[:, :, :20] = 255  # a white band at the far left, outside a centre crop of the short side
    plain = {"mean": (0.0,) * 3, "std": (1.0,) * 3}
    squash = eval_transform(Preprocessing(32, 32, **plain, crop_mode="squash"))(wide)
    center = eval_transform(Preprocessing(32, 32, **plain))(wide)
    assert squash.shape == center.shape == (3, 32, 32)
    assert squash[0, :, :4].min() > 0.95 and squash[0, :, 8:].max() < 0.05  # the whole width, squeezed
    assert center.max() < 0.05  # 96 x 32 after the resize: the middle 32 columns only
    assert Preprocessing.from_dict(Preprocessing(32, 32, crop_mode="squash").to_dict()).crop_mode == "squash"
    assert "crop_mode" not in Preprocessing(32, 32).to_dict()  # checkpoints of centre crops stay as they were
