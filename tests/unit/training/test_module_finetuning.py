"""Fine-tuning in the module: staged and gradual unfreezing, frozen BatchNorm, class weighting,
evaluating needs a trained classifier."""

import shutil
from collections import Counter

import lightning as L
import pytest
import torch

from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.models.factory import preprocessing_for
from effnet_lightning.training.module import EfficientNetModule


def _tiny_trainer(epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )


class Snapshots(L.Callback):
    """Copies of a backbone conv weight, a BN weight and running mean, and the classifier
    weight at the start and the end of every training epoch; the learning rate per group."""

    def __init__(self):
        self.snaps, self.lrs = [], []

    def _take(self, pl_module):
        model = pl_module.model
        return {
            "conv": model.stem.conv.weight.detach().clone(),
            "bn_weight": model.stem.bn.weight.detach().clone(),
            "bn_mean": model.blocks[3].project.bn.running_mean.clone(),
            "head": model.classifier.weight.detach().clone(),
        }

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        end = self._take(pl_module)
        self.snaps.append({k: not torch.equal(self.start[k], end[k]) for k in end})
        self.lrs.append([(g["lr"], g.get("lr_scale", 1.0)) for g in trainer.optimizers[0].param_groups])


def _datamodule(small_root):
    return ImageFolderDataModule(root=str(small_root), image_size=32, batch_size=8, num_workers=0)


class GroupChanges(L.Callback):
    """Per training epoch, which block groups' weights and BatchNorm statistics moved (from
    the input up), and each parameter's learning rate."""

    def __init__(self):
        self.moved, self.stats_moved, self.lr_of = [], [], {}

    @staticmethod
    def _state(pl_module):
        return [
            [t.detach().clone() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
            for modules in pl_module.model.block_groups()
        ]

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = self._state(pl_module)
        self.lr_of = {id(p): g["lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}

    def on_train_epoch_end(self, trainer, pl_module):
        end = self._state(pl_module)
        self.moved.append([any(not torch.equal(a, b) for a, b in zip(s, e)) for s, e in zip(self.start, end)])


@pytest.mark.slow
def test_staged_finetuning_trains_the_head_first_then_everything_at_a_lower_backbone_lr(small_root):
    torch.manual_seed(0)
    data = _datamodule(small_root)
    module = EfficientNetModule(
        "lite0",
        weights="imagenet",
        num_classes=10,
        class_names=data.class_names,
        freeze_backbone_epochs=1,
        backbone_lr_ratio=0.1,
        warmup_epochs=0,
        schedule="constant",
        lr=1e-2,
    )
    snaps = Snapshots()
    _tiny_trainer(2, [snaps]).fit(module, datamodule=data)
    changed_epoch0, changed_epoch1 = snaps.snaps
    # epoch 0: only the classifier moves; BN statistics stay those of the weights
    assert changed_epoch0 == {"conv": False, "bn_weight": False, "bn_mean": False, "head": True}
    assert changed_epoch1 == {"conv": True, "bn_weight": True, "bn_mean": True, "head": True}
    lrs = snaps.lrs[1]
    assert [lr for lr, scale in lrs if scale == 1.0] == pytest.approx([1e-2, 1e-2])  # the classifier's
    assert [lr for lr, scale in lrs if scale != 1.0] == pytest.approx([1e-3, 1e-3])  # the backbone's: lr x 0.1
    assert len(lrs) == 4  # backbone / head, each with and without weight decay


@pytest.mark.slow
def test_gradual_unfreezing_trains_block_groups_from_the_top_with_layer_wise_rates(small_root):
    torch.manual_seed(0)
    data = _datamodule(small_root)
    module = EfficientNetModule(
        "lite0",
        weights="imagenet",
        num_classes=10,
        class_names=data.class_names,
        freeze_backbone_epochs=1,
        unfreeze_groups_per_epoch=4,
        backbone_lr_ratio=0.5,
        layer_lr_decay=0.8,
        warmup_epochs=0,
        schedule="constant",
        lr=1e-2,
    )
    groups = module.model.block_groups()
    assert len(groups) == 9  # stem, seven rows of blocks, head convolution
    changes = GroupChanges()
    _tiny_trainer(3, [changes]).fit(module, datamodule=data)
    # epoch 0 the classifier only; then the top four groups; then the top eight (the stem still frozen)
    assert changes.moved == [[False] * 9, [False] * 5 + [True] * 4, [False] + [True] * 8]
    for depth, modules in enumerate(reversed(groups)):
        rates = [changes.lr_of[id(p)] for m in modules for p in m.parameters() if id(p) in changes.lr_of]
        assert rates and rates == pytest.approx([1e-2 * 0.5 * 0.8**depth] * len(rates)), depth
    assert changes.lr_of[id(module.model.classifier.weight)] == pytest.approx(1e-2)


@pytest.mark.slow
def test_freeze_bn_keeps_batchnorm_statistics_and_affine_fixed(small_root):
    torch.manual_seed(0)
    data = _datamodule(small_root)
    module = EfficientNetModule(
        "lite0",
        weights="imagenet",
        num_classes=10,
        class_names=data.class_names,
        freeze_bn=True,
        lr=1e-2,
        warmup_epochs=0,
    )
    snaps = Snapshots()
    _tiny_trainer(1, [snaps]).fit(module, datamodule=data)
    assert snaps.snaps[0] == {"conv": True, "bn_weight": False, "bn_mean": False, "head": True}


def test_class_weighted_loss_and_weighted_sampler_balance_an_imbalanced_folder(demo_root, tmp_path):
    counts = {"circle": 40, "square": 10, "star": 5}
    for name, n in counts.items():
        (tmp_path / name).mkdir()
        for src in sorted((demo_root / "train" / name).glob("*.png"))[:n]:
            shutil.copy(src, tmp_path / name / src.name)
    data = ImageFolderDataModule(
        root=str(tmp_path), image_size=32, batch_size=8, num_workers=0, val_fraction=0.2, weighted_sampler=True
    )
    data.setup("fit")
    assert data.class_counts() == [32, 8, 4]  # 20% of each class held out for validation
    module = EfficientNetModule("b0", num_classes=3, class_names=data.class_names, class_weighted_loss=True)
    module.trainer = L.Trainer(logger=False)
    module.trainer.datamodule = data
    module.setup("fit")
    assert module.loss_weights.tolist() == pytest.approx([44 / (3 * 32), 44 / (3 * 8), 44 / (3 * 4)])
    sampler = data.train_dataloader().sampler
    # The draws follow from (seed, epoch): the same epoch draws the same again, the next one anew.
    assert list(sampler) == list(sampler)
    drawn, by_epoch = Counter(), []
    for epoch in range(50):
        sampler.epoch_of = lambda epoch=epoch: epoch
        by_epoch.append([i for _, i in sampler])
        drawn.update(data.splits["train"][i][1] for i in by_epoch[-1])
    assert all(len(draws) == 44 for draws in by_epoch) and len({tuple(d) for d in by_epoch}) == 50
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    print(f"weighted sampler: class shares {[round(s, 3) for s in shares]} from 32/8/4 images")
    assert all(abs(s - 1 / 3) < 0.03 for s in shares)


def test_checkpoints_of_lite_fine_tunes_rebuild_the_same_network(tmp_path):
    """The Lite weights need SAME padding and TF BatchNorm: a checkpoint records them, so test,
    predict, export and fine-tuning from the checkpoint rebuild the network they trained."""
    torch.manual_seed(0)
    crop128 = preprocessing_for("lite0", "imagenet").resized(128).to_dict()  # trained at 128 px
    tuned = EfficientNetModule(
        "lite0", weights="imagenet", num_classes=3, class_names=["a", "b", "c"], preprocessing=crop128
    ).eval()
    tuned.model.classifier.weight.data.normal_()
    hp = dict(tuned.hparams)
    assert hp["model_options"] == {"padding": "same", "bn_eps": 1e-3, "bn_momentum": 0.01}
    path = tmp_path / "tuned.ckpt"
    torch.save({"state_dict": tuned.state_dict(), "hyper_parameters": hp}, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = tuned(x)
        rebuilt = EfficientNetModule(**{**hp, "weights": None}).eval()  # what test / predict / export do
        rebuilt.load_state_dict(tuned.state_dict())
        assert torch.equal(rebuilt(x), expected)
        again = EfficientNetModule("lite0", weights=str(path), num_classes=3).eval()  # fine-tuning from it
        assert torch.equal(again(x), expected) and again.hparams["model_options"] == hp["model_options"]
    # ... and its input: the checkpoint's crop size and the Lite normalisation, not the variant's defaults
    assert again.hparams["preprocessing"] == crop128 == preprocessing_for("lite0", str(path)).to_dict()


def test_evaluating_needs_a_trained_classifier_but_a_trained_module_in_python_is_fine(small_root):
    data = _datamodule(small_root)
    fresh = EfficientNetModule("b0", num_classes=10, class_names=data.class_names)
    with pytest.raises(ValueError, match="test: the network has no trained classifier for these 10 classes"):
        _tiny_trainer(1).test(fresh, datamodule=data)
    trainer = _tiny_trainer(1)
    trainer.fit(fresh, datamodule=data)
    trainer.test(fresh, datamodule=data)  # trained in this process: allowed
