"""Shards: `prepare` on real folders, training from the shards against training from the folder
(stopped mid-epoch and resumed), and two-process DDP from shards."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from effnet_lightning.data.folders import find_classes, folder_splits
from effnet_lightning.data.shards import open_shards, write_shards
from tests.helpers.cli import CSV, TINY, last_error_line, run_cli, train_losses
from tests.helpers.fault_doc import expect
from tests.helpers.images import make_bad_folder
from tests.helpers.shards import shard_contents

BAD_KINDS = {"truncated", "empty", "text", "dangling"}


def fit_metrics(cwd: Path) -> dict[int, float]:
    """{epoch: val/acc} of the runs under cwd."""
    import csv

    values = {}
    for path in sorted((cwd / "runs").glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            values |= {int(r["epoch"]): float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")}
    return values


def test_prepare_stores_each_readable_files_bytes_once_lists_the_bad_ones_and_refuses_to_overwrite(tmp_path):
    images = tmp_path / "images"
    kinds = make_bad_folder(images)
    done = run_cli(["prepare", "--data.root", images, "--output_dir", tmp_path / "shards"], tmp_path)
    assert "3 classes, images: train " in done.stdout and "4 unreadable files left out" in done.stdout

    shards = open_shards(tmp_path / "shards")
    assert shards.class_names == ["ant", "bee", "cat"]
    bad = {Path(path).name: why for path, why in shards.bad_files.items()}
    assert set(bad) == {kinds[kind] for kind in BAD_KINDS}
    assert bad[kinds["truncated"]].startswith("OSError: image file is truncated")  # decoded, not only the header
    listed = (tmp_path / "shards" / "bad_files.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == sorted(bad)

    # The folder's own splits (the same seeded split), without the bad files; the bytes are the files'.
    is_bad = {str(images / "ant" / name) for name in bad}
    expected = folder_splits(
        images, shards.class_names, 0.2, 42, readable=lambda s: [x for x in s if x[0] not in is_bad]
    )
    contents = shard_contents(tmp_path / "shards")
    for split in ("train", "val", "test"):
        want = [
            (str(Path(path).relative_to(images)), label, Path(path).read_bytes()) for path, label in expected[split]
        ]
        assert contents[split] == want, split
    assert len(contents["train"]) + len(contents["val"]) == 18 + 4  # 6 plain images a class; CMYK, RGBA, 16-bit, gray
    expect("prepare-bad-files", "4 unreadable files left out", "OSError: image file is truncated")

    again = run_cli(["prepare", "--data.root", images, "--output_dir", tmp_path / "shards"], tmp_path, check=False)
    assert again.returncode == 2
    assert last_error_line(again) == (
        f"error: {tmp_path / 'shards'} already holds shards: give another --output_dir, or delete "
        f"{tmp_path / 'shards'} first"
    )
    inside = run_cli(["prepare", "--data.root", images, "--output_dir", images / "shards"], tmp_path, check=False)
    assert inside.returncode == 2 and "is inside --data.root" in last_error_line(inside)
    assert not (images / "shards").exists()
    expect("prepare-again", "already holds shards: give another --output_dir", "is inside --data.root")


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, extra",
    [("0", []), ("2", ["--stages.count", "2", "--data.mixup_alpha", "0.4", "--data.weighted_sampler", "true"])],
)
def test_training_from_shards_stopped_mid_epoch_and_resumed_equals_training_from_the_folder(
    tmp_path, small_root, small_shards, workers, extra
):
    """The folder, uninterrupted, against its shards stopped by SIGTERM at step 6 of the first
    12-step epoch and resumed: the same classes, steps, per-step losses and val/acc (random crops,
    flips, dropout; with 2 workers also progressive stages, whose change rebuilds the loader, MixUp
    and the weighted sampler)."""
    args = [*TINY, *CSV, "--data.image_size", "48", "--data.num_workers", workers, *extra, "--model.dropout", "0.3"]
    args += ["--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "3", "--trainer.max_epochs", "2"]
    (tmp_path / "folder").mkdir()
    run_cli(["fit", "--data.root", small_root, *args], tmp_path / "folder")
    (tmp_path / "shards").mkdir()
    shard_fit = ["fit", "--data.root", small_shards, *args]
    env = {**os.environ, "PROBE_STEP": "6", "PROBE_SIGNAL": "SIGTERM"}
    stopped = run_cli(
        [*shard_fit, "--trainer.callbacks+=tests.helpers.probes.SignalAtStep"],
        tmp_path / "shards",
        check=False,
        env=env,
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    run_cli([*shard_fit, "--ckpt_path", "last"], tmp_path / "shards")

    folder, shards = train_losses(tmp_path / "folder"), train_losses(tmp_path / "shards")
    assert sorted(folder) == sorted(shards) == list(range(24))  # 100 images, batches of 8: 12 steps an epoch
    print(f"steps 6-11: folder {[folder[s] for s in range(6, 12)]}, shards {[shards[s] for s in range(6, 12)]}")
    assert [shards[s] for s in range(24)] == pytest.approx([folder[s] for s in range(24)], abs=1e-6)
    assert len({round(folder[s], 4) for s in range(24)}) == 24  # varied losses, not a constant
    assert fit_metrics(tmp_path / "shards") == pytest.approx(fit_metrics(tmp_path / "folder"), abs=1e-6)
    assert sorted(fit_metrics(tmp_path / "folder")) == [0, 1]
    record = json.loads((tmp_path / "shards" / "runs" / "latest_fit.json").read_text())
    saved = torch.load(tmp_path / "shards" / record["last_model_path"], weights_only=True)
    assert saved["hyper_parameters"]["class_names"] == find_classes(small_root / "train")


@pytest.mark.slow
def test_two_process_ddp_from_shards_draws_every_training_image_once_an_epoch_plus_the_stated_padding(
    tmp_path, small_root
):
    """101 training images over 2 processes: each process draws 51, one image twice (the padding),
    and drops its last incomplete batch; validation sees each of its 71 images exactly once."""
    folder = tmp_path / "images"
    shutil.copytree(small_root, folder)
    first = min((folder / "train").iterdir())
    shutil.copy(min(first.iterdir()), first / "extra.png")
    write_shards(folder, tmp_path / "shards", workers=2, say=lambda line: None)
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    args = ["fit", "--data.root", tmp_path / "shards", *TINY, *CSV, *ddp, "--data.image_size", "32"]
    args += ["--trainer.max_epochs", "2", "--trainer.callbacks+=tests.helpers.probes.SampleProbe"]
    run_cli(args, tmp_path, env={**os.environ, "PROBE_FILE": str(tmp_path / "samples")})
    ranks = [json.loads((tmp_path / f"samples.{rank}").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        drawn = [ranks[rank][epoch]["train"] for rank in (0, 1)]
        assert [len(d) for d in drawn] == [51, 51]
        together = sorted(drawn[0] + drawn[1])
        assert set(together) == set(range(101)) and len(together) - len(set(together)) == 1
        assert [ranks[rank][epoch]["steps"] for rank in (0, 1)] == [6, 6]  # 51 // 8: the last 3 are dropped
        validated = sorted(ranks[0][epoch]["val"] + ranks[1][epoch]["val"])
        assert validated == list(range(71))
    assert ranks[0][0]["train"] != ranks[0][1]["train"]  # a new order each epoch
