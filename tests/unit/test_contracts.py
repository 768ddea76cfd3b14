"""The data module contract (`effnet_lightning/contracts.py`): the image-folder data module has
every Protocol's members, an object missing one member does not pass for the Protocol, and the
module refuses a data module without a feature it needs in one clear line."""

import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest

from effnet_lightning.contracts import (
    BatchSize,
    ClassCounts,
    ImageSizes,
    LabelKind,
    ProgressiveStages,
    SkippedFiles,
    UnlabelledImages,
)
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.training.module import EfficientNetModule

# Each Protocol with its members: what a stand-in object needs to pass for it.
MEMBERS = {
    ImageSizes: {"preprocessing": object(), "train_size": 224, "extra_eval_sizes": [256]},
    ClassCounts: {"class_counts": lambda: [3, 1]},
    BatchSize: {"batch_size": 32},
    ProgressiveStages: {"stage_at": None, "train_size": 224, "hparams": {}, "next_epoch": lambda: 0},
    SkippedFiles: {"skipped": {}},
    UnlabelledImages: {"add_unlabelled_images": lambda root, share: None},
    LabelKind: {"multilabel": False, "train_images": lambda: 3},
}


def test_the_image_folder_data_module_satisfies_every_protocol():
    data = ImageFolderDataModule(
        root=None, class_names=["a", "b"], batch_size=12, image_size=96, eval_image_size=128, extra_eval_sizes=[160]
    )
    assert [p.__name__ for p in MEMBERS if isinstance(data, p)] == [p.__name__ for p in MEMBERS]
    assert data.batch_size == 12 and data.train_size == 96 and data.skipped == {}
    assert data.preprocessing.crop_size == 128 and data.extra_eval_sizes == [160] and data.stage_at is None


@pytest.mark.parametrize("protocol", MEMBERS, ids=lambda p: p.__name__)
def test_an_object_missing_one_member_does_not_pass(protocol):
    members = MEMBERS[protocol]
    assert isinstance(SimpleNamespace(**members), protocol)
    for left_out in members:
        rest = {name: value for name, value in members.items() if name != left_out}
        assert not isinstance(SimpleNamespace(**rest), protocol), left_out
    assert not isinstance(object(), protocol)


def attached(module: EfficientNetModule, datamodule) -> EfficientNetModule:
    module.trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    module.trainer.datamodule = datamodule
    return module


def test_class_weighted_loss_needs_class_counts():
    module = attached(EfficientNetModule("b0", num_classes=2, class_weighted_loss=True), L.LightningDataModule())
    with pytest.raises(ValueError, match=r"^class_weighted_loss needs a data module with class_counts\(\)$"):
        module.setup("fit")
    counting = SimpleNamespace(class_counts=lambda: [30, 10])
    module = attached(EfficientNetModule("b0", num_classes=2, class_weighted_loss=True), counting)
    module.setup("fit")
    assert module.loss_weights.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])


def test_the_learning_rate_scales_with_the_data_modules_batch_size():
    data = ImageFolderDataModule(root=None, class_names=["a", "b"], batch_size=64)
    module = attached(EfficientNetModule("b0", num_classes=2, lr=0.1, lr_base_batch=256), data)
    assert module.scaled_lr() == pytest.approx(0.1 * 64 / 256)
    module = attached(EfficientNetModule("b0", num_classes=2, lr=0.1, lr_base_batch=256), L.LightningDataModule())
    with pytest.raises(ValueError, match=r"^lr_base_batch needs the data module's batch_size$"):
        module.scaled_lr()


def test_checkpoints_record_the_image_sizes_of_a_data_module_that_has_them():
    data = ImageFolderDataModule(root=None, class_names=["a", "b"], image_size=96, eval_image_size=128)
    module = attached(EfficientNetModule("b0", num_classes=2), data)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint == {"image_sizes": {"train": 96, "eval": 128}}
    module = attached(EfficientNetModule("b0", num_classes=2), L.LightningDataModule())
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint == {}


def test_the_contracts_import_nothing_of_the_project_nor_torch():
    code = (
        "import sys, effnet_lightning.contracts\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('effnet_lightning', 'torch', 'lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "['effnet_lightning', 'effnet_lightning.contracts']"


def test_setup_takes_the_evaluation_input_and_extra_sizes_from_a_data_module_with_image_sizes():
    data = ImageFolderDataModule(root=None, class_names=["a", "b"], eval_image_size=128, extra_eval_sizes=[160, 192])
    module = attached(EfficientNetModule("b0", num_classes=2), data)
    module.setup("validate")
    assert list(module.extra_val_acc) == ["160", "192"] and module.hparams.preprocessing["crop_size"] == 128
    bare = attached(EfficientNetModule("b0", num_classes=2), L.LightningDataModule())
    bare.setup("validate")
    assert list(bare.extra_val_acc) == [] and bare.hparams.preprocessing["crop_size"] == 224
