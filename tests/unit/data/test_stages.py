"""The progressive-learning plan and evaluation sizes in the data module."""

import math

import pytest
import torch

from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.stages import ProgressivePlan

FINAL = {"randaugment": 15, "mixup": 0.2, "cutmix": 0.0, "dropout": 0.3}


def test_stages_grow_the_size_and_the_ramped_regularisers_to_the_runs_own_values():
    schedule = ProgressivePlan(count=4, start=0.5, ramp=("randaugment", "mixup", "dropout"))
    stages = [schedule.stage(epoch, 8, 224, FINAL) for epoch in range(8)]
    assert [s.index for s in stages] == [0, 0, 1, 1, 2, 2, 3, 3]
    # EfficientNetV2: size ibase + (size - ibase) x (s + 1) / S with ibase = size x start
    assert [s.image_size for s in stages[::2]] == [140, 168, 196, 224]
    assert [s.randaugment_magnitude for s in stages[::2]] == [5, 8, 12, 15]
    assert [s.mixup_alpha for s in stages[::2]] == pytest.approx([0, 0.0667, 0.1333, 0.2], abs=1e-4)
    assert [s.dropout for s in stages[::2]] == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-4)
    assert {s.cutmix_alpha for s in stages} == {0.0}  # off stays off
    # a regulariser left out of the ramp keeps its final value throughout
    fixed_dropout = ProgressivePlan(count=4, ramp=("mixup",)).stage(0, 8, 224, FINAL)
    assert fixed_dropout.dropout == 0.3 and fixed_dropout.randaugment_magnitude == 15
    # a final value below the ramp's start is not exceeded
    assert ProgressivePlan(count=2).stage(0, 4, 64, {**FINAL, "dropout": 0.05}).dropout == 0.05
    # one stage: the plain run
    assert ProgressivePlan(count=1).stage(3, 8, 224, FINAL).image_size == 224
    # uneven epochs: near-equal shares, the last stage at the full size
    assert [ProgressivePlan(count=3).index(e, 10) for e in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "stage 2 of 4: 168 px, dropout 0.167" in stages[2].describe(("dropout",))


def test_schedule_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="count >= 1 and 0 < start <= 1"):
        ProgressivePlan(count=0)
    with pytest.raises(ValueError, match="unknown \\['blur'\\]: choose from randaugment, mixup, cutmix, dropout"):
        ProgressivePlan(count=2, ramp=("blur",))


def test_evaluation_sizes_are_apart_from_the_training_size_and_keep_the_crop_fraction(small_root):
    dm = ImageFolderDataModule(
        root=str(small_root), image_size=48, eval_image_size=56, extra_eval_sizes=[40, 56, 72], num_workers=0
    )
    dm.setup("fit")
    assert dm.train_size == 48 and dm.preprocessing.crop_size == 56 and dm.extra_eval_sizes == [40, 72]
    assert dm.preprocessing.resize_size == math.floor(56 / 0.875)
    train = next(iter(dm.train_dataloader()))[0]
    val = [next(iter(loader))[0] for loader in dm.val_dataloader()]
    assert train.shape[-1] == 48 and [v.shape[-1] for v in val] == [56, 40, 72]
    assert next(iter(dm.test_dataloader()))[0].shape[-1] == 56
    # without eval_image_size: the training size (today's behaviour), or the weights' size
    assert ImageFolderDataModule(root=str(small_root), image_size=48).preprocessing.crop_size == 48
    assert ImageFolderDataModule(root=str(small_root)).preprocessing.crop_size == 224


def test_inside_a_stage_the_data_module_hands_back_the_same_training_loader(small_root):
    dm = ImageFolderDataModule(root=str(small_root), image_size=48, batch_size=8, num_workers=0, mixup_alpha=0.4)
    dm.setup("fit")
    stages = ProgressivePlan(count=2)
    final = {"randaugment": 9, "mixup": 0.4, "cutmix": 0.0, "dropout": 0.2}
    epoch = {"now": 0}
    dm.stage_at = lambda _: stages.stage(epoch["now"], 4, dm.train_size, final)
    loaders = []
    for epoch["now"] in range(4):
        loaders.append(dm.train_dataloader())
    assert loaders[0] is loaders[1] and loaders[2] is loaders[3] and loaders[1] is not loaders[2]
    first, last = next(iter(loaders[0])), next(iter(loaders[3]))
    assert first[0].shape[-1] == 36 and first[1].ndim == 1  # stage 0: mixup alpha 0, plain labels
    assert last[0].shape[-1] == 48 and last[1].shape == (8, 10)
    assert torch.allclose(last[1].sum(1), torch.ones(8))  # mixed targets
    assert dm.val_dataloader() is dm.val_dataloader()
