"""Fine-tuning: pretrained weights beat training from scratch, the staged schedule freezes and
then trains the backbone, BatchNorm freezing, and the class-imbalance options."""

import csv
import re
import shutil

import pytest
import torch
from PIL import Image

from effnet_lightning.data import demo
from tests.helpers.cli import CSV, ROOT, fit_summary, last_error_line, printed_metric, run_cli


@pytest.fixture(scope="module")
def class_folder(demo_root, tmp_path_factory):
    """One folder of class folders (split by the data module): 30 images per class."""
    root = tmp_path_factory.mktemp("folder")
    for name in demo.CLASSES:
        (root / name).mkdir()
        for src in sorted((demo_root / "train" / name).glob("*.png"))[:30]:
            shutil.copy(src, root / name / src.name)
    return root


@pytest.fixture(scope="module")
def small_gray(demo_root, tmp_path_factory):
    """The demo shapes as 32-px grayscale images (100 train / 30 val per class): far from
    ImageNet in size and look, as many users' data sets are."""
    root = tmp_path_factory.mktemp("gray32")
    for split in ("train", "val"):
        for path in (demo_root / split).rglob("*.png"):
            out = root / split / path.parent.name / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("L").resize((32, 32), Image.BILINEAR).save(out)
    return root


def _val_acc_per_epoch(folder) -> list[float]:
    rows = csv.DictReader(next(folder.rglob("metrics.csv")).open())
    return [float(r["val/acc"]) for r in rows if r.get("val/acc")]


@pytest.mark.slow
def test_finetuning_packaged_lite0_imagenet_weights_beats_training_from_scratch(tmp_path, class_folder):
    budget = [
        "fit",
        "--config",
        ROOT / "configs" / "finetune.yaml",
        "--data.root",
        class_folder,
        "--model.variant",
        "lite0",
        "--data.image_size",
        "112",
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "0",
        "--data.val_fraction",
        "0.34",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        *CSV,
    ]
    finetuned = run_cli([*budget, "--model.weights", "imagenet", "--trainer.default_root_dir", "pretrained"], tmp_path)
    scratch = run_cli(
        [
            *budget,
            "--model.weights",
            "null",
            "--model.freeze_backbone_epochs",
            "0",
            "--model.backbone_lr_ratio",
            "1",
            "--model.freeze_bn",
            "false",  # from scratch there are no statistics worth keeping
            "--trainer.default_root_dir",
            "scratch",
        ],
        tmp_path,
    )
    assert "epoch 1: the backbone trains from now on" in finetuned.stdout + finetuned.stderr
    (acc_finetuned, ckpt), (acc_scratch, _) = fit_summary(finetuned.stdout), fit_summary(scratch.stdout)
    print(
        f"2 epochs, 200 training images at 112 px: val/acc fine-tuned lite0 {acc_finetuned:.3f}, "
        f"from scratch {acc_scratch:.3f}"
    )
    assert acc_finetuned >= acc_scratch + 0.3
    assert ckpt.startswith("pretrained/")  # checkpoints follow --trainer.default_root_dir
    hp = torch.load(tmp_path / ckpt, weights_only=True)["hyper_parameters"]
    assert hp["weights"] == "imagenet" and hp["preprocessing"]["mean"] == pytest.approx(
        [127 / 255] * 3
    )  # (x - 127) / 128
    # the Lite weights need SAME padding and TF BatchNorm: the checkpoint rebuilds the same
    # network, so testing it on the validation images (no test/ folder) gives the val/acc again
    assert hp["model_options"] == {"padding": "same", "bn_eps": 1e-3, "bn_momentum": 0.01}
    tested = run_cli(
        [
            "test",
            "--ckpt_path",
            ckpt,
            "--data.root",
            class_folder,
            "--data.image_size",
            "112",
            "--data.val_fraction",
            "0.34",
            "--data.num_workers",
            "0",
            *CSV,
        ],
        tmp_path,
    )
    assert printed_metric(tested.stdout, "test/acc") == pytest.approx(acc_finetuned, abs=1e-4)


@pytest.mark.slow
def test_lr_find_from_the_cli_sets_the_classifiers_rate_for_the_global_batch(tmp_path, small_root):
    """`--lr_find.enabled true` with the fine-tuning config: the sweep runs in the frozen epoch,
    the rate found is the classifier's at this run's global batch (lr_base_batch converts it
    back), the optimizer starts at it, and the checkpoint records the `lr` behind it."""
    args = [
        "fit",
        "--config",
        ROOT / "configs" / "finetune.yaml",
        "--data.root",
        small_root,
        "--model.variant",
        "lite0",
        "--model.weights",
        "imagenet",
        "--data.image_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--model.schedule",
        "constant",
        "--model.warmup_epochs",
        "0",
        "--model.lr_base_batch",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--lr_find.enabled",
        "true",
        "--lr_find.num_training_steps",
        "40",  # more than the 25 steps of the frozen epoch: the sweep stops there
        *CSV,
    ]
    out = run_cli(args, tmp_path)
    match = re.search(
        r"lr_find: learning rate (\S+) for the classifier, at the global batch of 4: lr (\S+) per 16", out.stderr
    )
    assert match, out.stderr[-3000:]
    found, lr = float(match.group(1)), float(match.group(2))
    assert "after 25 steps" in out.stderr
    assert lr == pytest.approx(found * 16 / 4, rel=1e-2)
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    first = next(r for r in rows if r.get("lr-AdamW/pg1"))
    assert float(first["lr-AdamW/pg1"]) == pytest.approx(found, rel=1e-2)  # the classifier's group
    assert float(first["lr-AdamW/pg3"]) == pytest.approx(found * 0.1, rel=1e-2)  # the backbone's: x backbone_lr_ratio
    _, best = fit_summary(out.stdout)
    saved = torch.load(tmp_path / best, weights_only=True)
    assert saved["hyper_parameters"]["lr"] == pytest.approx(lr, rel=1e-2)
    assert not list(tmp_path.rglob(".lr_find_*.ckpt"))  # the sweep's checkpoint is gone
    refused = run_cli([*args, "--model.freeze_backbone_epochs", "0"], tmp_path, check=False)
    assert "lr_find sweeps one rate" in last_error_line(refused)


@pytest.mark.slow
def test_finetune_config_does_not_degrade_after_unfreezing_where_batch_statistics_do(tmp_path, small_gray):
    args = [
        "fit",
        "--config",
        ROOT / "configs" / "finetune.yaml",
        "--data.root",
        small_gray,
        "--model.variant",
        "lite0",
        "--model.weights",
        "imagenet",
        "--data.image_size",
        "64",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        *CSV,
    ]
    run_cli([*args, "--trainer.default_root_dir", "new"], tmp_path)
    run_cli([*args, "--trainer.default_root_dir", "old", "--model.freeze_bn", "false"], tmp_path)
    new, old = _val_acc_per_epoch(tmp_path / "new"), _val_acc_per_epoch(tmp_path / "old")
    print(f"val/acc per epoch (epoch 0: classifier only): configs/finetune.yaml {new}, freeze_bn false {old}")
    assert len(new) == len(old) == 3 and new[0] == old[0]  # the same classifier-only epoch
    assert old[-1] < old[0]  # training BatchNorm on these batches makes every later epoch worse
    assert new[-1] >= new[0]  # the shipped config does not
