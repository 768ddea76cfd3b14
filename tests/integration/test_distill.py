"""Distillation through the real CLI: `fit --distill.teacher` with unlabelled images, what the
teacher sees and keeps, two-process DDP, resuming with `--ckpt_path last`, and the refusals.

The teacher is a checkpoint of this project on the demo's classes: the packaged Lite0 ImageNet
weights with a random head, evaluated at 64 px with Lite0's normalisation, while the students
train at 48 px."""

import json
import shutil
import signal

import lightning
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from effnet_lightning.data import demo
from effnet_lightning.data.decode import load_rgb
from effnet_lightning.data.transforms import eval_transform
from effnet_lightning.models.factory import create_model
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.training.distillation import state_digest
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers.cli import CSV, run_cli, train_losses
from tests.helpers.fault_doc import expect

STUDENT = ["--data.image_size", "48", "--data.batch_size", "8", "--data.num_workers", "0"]
STUDENT += ["--trainer.enable_progress_bar", "false", *CSV, "--trainer.limit_val_batches", "1"]
STUDENT += ["--trainer.log_every_n_steps", "1"]


@pytest.fixture(scope="module")
def teacher_ckpt(small_root, tmp_path_factory):
    """A Lite0 teacher checkpoint (64 px, Lite0's own normalisation) on the demo's ten classes:
    the packaged ImageNet weights with a random head scaled so that its logits on the demo's
    images spread with a standard deviation of 2: opinions that vary from image to image, none
    of them certain."""
    pre = Preprocessing(crop_size=64, resize_size=73, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    classes = list(demo.CLASSES)
    module = EfficientNetModule("lite0", 10, "imagenet", class_names=classes, preprocessing=pre.to_dict())
    network = module.model.eval()
    paths = sorted((small_root / "train").rglob("*.png"))[::10]
    images = torch.stack([eval_transform(pre)(load_rgb(path)) for path in paths])
    torch.manual_seed(0)
    with torch.no_grad():
        network.classifier.weight.normal_()
        network.classifier.weight.mul_(2 / network(images).std())
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def unlabelled_root(demo_root, tmp_path_factory):
    """24 images without labels, two folders deep."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "batch1" / "more").mkdir(parents=True)
    for i, src in enumerate(sorted((demo_root / "val").rglob("*.png"))[:24]):
        shutil.copy(src, root / "batch1" / ("more" if i % 2 else "") / f"u{i}.png")
    return root


def test_the_teacher_sees_the_students_augmented_batch_resized_stays_frozen_and_out_of_the_checkpoint(
    tmp_path, small_root, teacher_ckpt, unlabelled_root
):
    args = ["fit", "--data.root", small_root, *STUDENT, "--trainer.max_epochs", "1"]
    args += ["--trainer.limit_train_batches", "3", "--data.augment", "randaugment", "--data.mixup_alpha", "0.4"]
    args += ["--distill.teacher", teacher_ckpt, "--distill.extra_root", unlabelled_root, "--distill.extra_share", "0.2"]
    probe = tmp_path / "probe.json"
    out = run_cli(
        [*args, "--trainer.callbacks+=tests.helpers.probes.TeacherProbe"], tmp_path, env=_env(PROBE_FILE=probe)
    )
    assert (
        f"distilling from lite0 ({teacher_ckpt}) at 64 px: 0.75 x label loss + 0.25 x KL at temperature 1" in out.stderr
    )
    record = json.loads(probe.read_text())
    seen = torch.load(f"{probe}.pt", weights_only=True)
    # 8 labelled images and 2 unlabelled ones (a fifth of the batch) at the student's 48 px,
    # augmented and mixed; the teacher had all ten at its own 64 px, under its normalisation.
    assert seen["images"].shape == (8, 3, 48, 48) and seen["unlabelled"].shape == (2, 3, 48, 48)
    batch = torch.cat([seen["images"], seen["unlabelled"]])
    student = Preprocessing(crop_size=48, resize_size=55)  # B0's: ImageNet's mean and std
    pixels = batch * torch.tensor(student.std).view(1, 3, 1, 1) + torch.tensor(student.mean).view(1, 3, 1, 1)
    expected = v2.Normalize([0.5] * 3, [0.5] * 3)(
        TF.resize(pixels, [64, 64], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    )
    received = seen["teacher_input"]
    assert received.shape == (10, 3, 64, 64)
    print(f"teacher input vs the student's batch resized: max difference {(received - expected).abs().max():.2e}")
    assert torch.allclose(received, expected, atol=1e-4)
    # frozen: never in training mode, not a submodule, no parameter shared, the same tensors at the end
    assert record["teacher_training"] == [False, False, False]
    assert not record["teacher_in_modules"] and record["teacher_params_in_module"] == 0
    assert record["digest_at_end"] == record["digest_at_start"]
    teacher = create_model(weights=str(teacher_ckpt))
    assert record["teacher_digest"] == state_digest(teacher)  # the file's own weights
    # the checkpoint holds the student's tensors alone, and what the teacher was
    saved = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)
    student_keys = set(EfficientNetModule("b0", num_classes=10).state_dict())
    assert set(saved["state_dict"]) == student_keys
    assert saved["distillation"] == {
        "teacher": str(teacher_ckpt),
        "teacher_variant": None,
        "teacher_digest": record["teacher_digest"],
        "alpha": 0.25,
        "temperature": 1.0,
        "extra_root": str(unlabelled_root),
        "extra_share": 0.2,
    }
    label, teacher_term, total = (
        train_losses(tmp_path, f"train/{k}_step") for k in ("label_loss", "distill_loss", "loss")
    )
    assert sorted(total) == [0, 1, 2]
    for step in total:
        assert total[step] == pytest.approx(0.75 * label[step] + 0.25 * teacher_term[step], rel=1e-5)
        assert teacher_term[step] > 1e-3  # a teacher with opinions, not a uniform one


@pytest.mark.slow
def test_two_process_ddp_with_a_teacher_gives_the_one_process_losses(
    tmp_path, small_root, teacher_ckpt, unlabelled_root
):
    """The same global batch of 8 labelled and 8 unlabelled images per step: one process, or two
    with 4 + 4 each (each process's share of both orders). A fine-tune of the packaged Lite0
    ImageNet weights with BatchNorm on their statistics (PyTorch synchronises BatchNorm on GPUs
    only) and no dropout: the mean of the two processes' losses is the one process's loss, step
    by step (within 1e-5). Every process computes on one thread, as DDP on a 2-core machine
    does (a second thread sums in another order).
    """
    args = [
        "fit",
        "--data.root",
        small_root,
        *STUDENT,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "4",
    ]
    args += [
        "--model.variant",
        "lite0",
        "--model.weights",
        "imagenet",
        "--model.freeze_bn",
        "true",
        "--model.dropout",
        "0",
    ]
    args += ["--model.drop_path_rate", "0"]
    args += ["--distill.teacher", teacher_ckpt]
    args += ["--distill.extra_root", unlabelled_root, "--trainer.callbacks+=tests.helpers.probes.RankLosses"]
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    ddp += ["--data.batch_size", "4"]
    (tmp_path / "one").mkdir()
    run_cli(args, tmp_path / "one", env=_env(PROBE_FILE=tmp_path / "one.json", OMP_NUM_THREADS=1))
    (tmp_path / "two").mkdir()
    run_cli([*args, *ddp], tmp_path / "two", env=_env(PROBE_FILE=tmp_path / "two.json", OMP_NUM_THREADS=1))
    one = json.loads((tmp_path / "one.json.0").read_text())
    ranks = [json.loads((tmp_path / f"two.json.{rank}").read_text()) for rank in (0, 1)]
    two = [(a + b) / 2 for a, b in zip(*ranks)]
    print(f"losses: one process {one}, mean of two {two}")
    assert len(one) == len(two) == 4 and len({round(x, 4) for x in one}) == 4
    assert two == pytest.approx(one, abs=1e-5)
    assert ranks[0] != pytest.approx(ranks[1], abs=1e-3)  # each process had its own share


@pytest.mark.slow
def test_a_distilled_fit_stopped_mid_epoch_resumes_with_ckpt_path_last_and_refuses_a_changed_teacher(
    tmp_path, small_root, teacher_ckpt, unlabelled_root
):
    """Stopped at step 5 of a 6-step epoch by SIGTERM and resumed with `--ckpt_path last` (the
    teacher and the unlabelled images not repeated): every later loss is the uninterrupted run's.
    The teacher's file changed since: refused in one line."""
    args = ["fit", "--data.root", small_root, *STUDENT, "--trainer.max_epochs", "2", "--model.dropout", "0.3"]
    args += ["--trainer.limit_train_batches", "6", "--data.mixup_alpha", "0.4", "--data.augment", "randaugment"]
    teacher = tmp_path / "teacher.ckpt"
    shutil.copy(teacher_ckpt, teacher)
    distill = ["--distill.teacher", teacher, "--distill.extra_root", unlabelled_root, "--distill.alpha", "0.7"]
    (tmp_path / "whole").mkdir()
    run_cli([*args, *distill], tmp_path / "whole")
    (tmp_path / "split").mkdir()
    stopped = run_cli(
        [*args, *distill, "--trainer.callbacks+=tests.helpers.probes.SignalAtStep"],
        tmp_path / "split",
        check=False,
        env=_env(PROBE_STEP=5, PROBE_SIGNAL="SIGTERM"),
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    resumed = run_cli([*args, "--ckpt_path", "last"], tmp_path / "split")
    assert f"fit: distilling from the checkpoint's teacher {teacher}" in resumed.stdout + resumed.stderr
    assert "0.3 x label loss + 0.7 x KL" in resumed.stderr
    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert sorted(whole) == sorted(split) == list(range(12))
    print(f"steps 5-11: uninterrupted {[whole[s] for s in range(5, 12)]}, resumed {[split[s] for s in range(5, 12)]}")
    assert [split[s] for s in range(12)] == pytest.approx([whole[s] for s in range(12)], abs=1e-6)
    assert len({round(whole[s], 4) for s in range(12)}) == 12

    checkpoint = torch.load(teacher, weights_only=True)
    checkpoint["state_dict"]["model.classifier.bias"] += 0.1
    torch.save(checkpoint, teacher)
    changed = run_cli([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"], tmp_path / "split", check=False)
    assert changed.returncode == 2
    line = changed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: --distill.teacher {teacher} is not the teacher this checkpoint was trained with")
    assert "restore that teacher, or start a new fit without --ckpt_path" in line
    expect("distill-teacher-changed", "is not the teacher this checkpoint was trained with", "2")


def test_distillation_refusals_are_one_line(tmp_path, small_root, teacher_ckpt, capsys, monkeypatch):
    from tests.helpers.cli import run_main

    base = ["fit", "--data.root", small_root, *STUDENT, "--trainer.max_epochs", "1"]
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(teacher_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = [f"c{i}" for i in range(10)]
    torch.save(checkpoint, other)
    status, line = run_main([*base, "--distill.teacher", other], capsys, monkeypatch, tmp_path)
    assert status == 2 and f"--distill.teacher {other} was trained on classes ['c0', 'c1', 'c2', 'c3', 'c4']..." in line
    assert "the teacher must be trained on the student's classes" in line
    expect("distill-classes", "was trained on classes", "the teacher must be trained on the student's classes")
    status, line = run_main([*base, "--distill.teacher", "best"], capsys, monkeypatch, tmp_path)
    assert status == 2
    assert line == (
        "error: --distill.teacher best: no best checkpoint of a fit recorded in runs/latest_fit.json; fit the "
        "teacher first, or give its checkpoint file"
    )
    status, line = run_main([*base, "--distill.extra_root", tmp_path], capsys, monkeypatch, tmp_path)
    assert status == 2 and "--distill.extra_root trains through a teacher's term: give --distill.teacher too" in line
    status, line = run_main(
        [*base, "--distill.teacher", teacher_ckpt, "--distill.alpha", "1.5"], capsys, monkeypatch, tmp_path
    )
    assert status == 2 and "--distill.alpha must be between 0 and 1" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [*base, "--distill.teacher", teacher_ckpt, "--distill.extra_root", empty]
    status, line = run_main(args, capsys, monkeypatch, tmp_path)
    assert status == 2 and line == f"error: no readable images under --distill.extra_root {empty}"
    expect("distill-extra-empty", "no readable images under --distill.extra_root")


def _env(**values) -> dict:
    import os

    return {**os.environ, **{k: str(v) for k, v in values.items()}}
