"""The data module's settings on their own: the sizes its arguments resolve to, and the checks of
its arguments."""

import pytest

from effnet_lightning.data.datamodule import (
    ResolvedSizes,
    check_augmentation,
    check_sizes,
    predict_folder,
    resolve_sizes,
)
from effnet_lightning.models.preprocessing import Preprocessing


def test_without_preprocessing_the_sizes_are_imagenets_224():
    assert resolve_sizes(None) == ResolvedSizes(train=224, evaluation=Preprocessing(224, 256), extra_eval=())


def test_image_size_sets_both_crops_at_the_weights_crop_fraction():
    sizes = resolve_sizes(Preprocessing(300, 320).to_dict(), image_size=128)
    assert sizes.train == 128
    assert (sizes.evaluation.crop_size, sizes.evaluation.resize_size) == (128, 136)  # 128 / (300 / 320)


def test_weights_test_size_is_the_evaluation_size_when_none_is_given():
    pre = Preprocessing(288, 320, test_size=320)
    sizes = resolve_sizes(pre.to_dict())
    assert sizes.train == 288
    assert (sizes.evaluation.crop_size, sizes.evaluation.resize_size, sizes.evaluation.test_size) == (320, 355, None)
    # A size the user gives wins over the weights' test size.
    assert resolve_sizes(pre.to_dict(), image_size=96).evaluation.crop_size == 96
    assert resolve_sizes(pre.to_dict(), eval_image_size=256).evaluation.crop_size == 256


def test_unchanged_crop_keeps_the_weights_preprocessing_itself():
    pre = Preprocessing(240, 260, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    assert resolve_sizes(pre.to_dict(), image_size=240).evaluation == pre


def test_extra_eval_sizes_once_each_in_order_without_the_evaluation_size():
    sizes = resolve_sizes(None, image_size=64, eval_image_size=80, extra_eval_sizes=[96, 80, 64, 96])
    assert (sizes.train, sizes.evaluation.crop_size, sizes.evaluation.resize_size) == (64, 80, 91)
    assert sizes.extra_eval == (96, 64)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, None, None, None), "batch_size must be positive, got 0"),
        ((8, None, -1, None), "eval_image_size must be positive, got -1"),
        ((8, 64, 80, [96, 0]), "extra_eval_sizes must be positive, got 0"),
    ],
)
def test_check_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        check_sizes(*args)
    check_sizes(1, 1, None, [1, 2])  # the smallest sizes pass


@pytest.mark.parametrize(
    "args, message",
    [
        ((31, (0.08, 1.0), 0.0, 0.0, 0.0), "randaugment_magnitude must be in 0-30, got 31"),
        ((9, (0.6, 0.5), 0.0, 0.0, 0.0), r"crop_scale must satisfy 0 < min <= max <= 1, got \(0.6, 0.5\)"),
        ((9, [0.0, 1.0], 0.0, 0.0, 0.0), r"crop_scale must satisfy 0 < min <= max <= 1, got \(0.0, 1.0\)"),
        ((9, (0.08, 1.0), 1.5, 0.0, 0.0), r"random_erasing <= 1 and mixup_alpha, cutmix_alpha >= 0, got 1.5, 0.0, 0.0"),
        (
            (9, (0.08, 1.0), 0.0, 0.2, -0.1),
            r"random_erasing <= 1 and mixup_alpha, cutmix_alpha >= 0, got 0.0, 0.2, -0.1",
        ),
    ],
)
def test_check_augmentation(args, message):
    with pytest.raises(ValueError, match=message):
        check_augmentation(*args)
    check_augmentation(0, (1.0, 1.0), 1.0, 0.0, 0.0)  # the ends of the ranges pass


def test_predict_folder(tmp_path):
    assert predict_folder(None) is None and predict_folder(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match=f"--data.predict_root {tmp_path / 'missing'} is not a folder"):
        predict_folder(str(tmp_path / "missing"))
