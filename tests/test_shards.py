"""Shards: `prepare` on real folders, training from the shards against training from the folder
(stopped mid-epoch and resumed), and two-process DDP from shards."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from cli_helpers import CSV, ROOT, TINY, last_error_line, run_cli, train_losses
from conftest import make_bad_folder
from fault_doc import expect

from effnet_lightning.data import datamodule as datamodule_module
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.folders import find_classes, folder_splits
from effnet_lightning.data.shards import SHARDS_INFO, open_shards, write_shards

BAD_KINDS = {"truncated", "empty", "text", "dangling"}


def shard_contents(root: Path) -> dict[str, list[tuple[str, int, bytes]]]:
    """{split: [(file name, label, encoded bytes)]} of a shard folder, in order."""
    shards = open_shards(root)
    return {
        split: [(str(image), label, image.data) for image, label in samples] for split, samples in shards.splits.items()
    }


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


def test_the_data_module_reads_shards_without_listing_a_file(tmp_path, small_root, monkeypatch):
    write_shards(small_root, tmp_path / "shards", workers=2, say=lambda line: None)

    def no_listing(*args, **kwargs):
        raise AssertionError("a shard folder must not be listed file by file")

    monkeypatch.setattr(datamodule_module, "folder_splits", no_listing)
    monkeypatch.setattr(datamodule_module, "find_bad_images", no_listing)
    data = ImageFolderDataModule(root=str(tmp_path / "shards"), image_size=32, batch_size=8, num_workers=2)
    data.setup("fit")
    assert data.class_names == find_classes(small_root / "train")
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [100, 71, 71]
    assert data.class_counts() == [10] * 10
    images, labels = next(iter(data.val_dataloader()))  # in worker processes
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == [0] * 8


def test_an_interrupted_prepare_continues_where_it_stopped_and_keeps_the_finished_split(tmp_path, small_root):
    def stop_before_val(line):
        if line.startswith("writing") and "val" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(small_root, tmp_path / "shards", workers=2, say=stop_before_val)
    assert not (tmp_path / "shards" / SHARDS_INFO).exists()
    train_chunks = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards" / "train").iterdir()}
    lines = []
    write_shards(small_root, tmp_path / "shards", workers=2, say=lines.append)
    assert lines[0] == f"continuing the unfinished prepare in {tmp_path / 'shards'}"
    assert not any("train" in line for line in lines)  # the finished split is kept, not written again
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards" / "train").iterdir()} == train_chunks

    write_shards(small_root, tmp_path / "whole", workers=2, say=lambda line: None)
    assert shard_contents(tmp_path / "shards") == shard_contents(tmp_path / "whole")
    expect("prepare-interrupted", "continuing the unfinished prepare in", "the finished split is kept")


@pytest.fixture(scope="module")
def small_shards(small_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "small"
    write_shards(small_root, out, workers=2, say=lambda line: None)
    return out


def fit_metrics(cwd: Path) -> dict[int, float]:
    """{epoch: val/acc} of the runs under cwd."""
    import csv

    values = {}
    for path in sorted((cwd / "runs").glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            values |= {int(r["epoch"]): float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")}
    return values


def test_shards_at_a_url_are_read_through_litdatas_downloader_and_an_unreadable_url_is_one_line(small_shards):
    """`local:` is litdata's URL for a folder read the way it reads an object store: the info
    file through its downloader, the chunks copied into its cache."""
    by_url = ImageFolderDataModule(root=f"local:{small_shards}", image_size=32, batch_size=8, num_workers=0)
    by_path = ImageFolderDataModule(root=str(small_shards), image_size=32, batch_size=8, num_workers=0)
    for data in (by_url, by_path):
        data.setup("fit")
    assert by_url.class_names == by_path.class_names and by_url.class_counts() == by_path.class_counts()
    url_images, url_labels = next(iter(by_url.val_dataloader()))
    path_images, path_labels = next(iter(by_path.val_dataloader()))
    assert torch.equal(url_images, path_images) and torch.equal(url_labels, path_labels)
    assert list(Path(os.environ["LITDATA_CACHE_DIR"]).rglob("chunk-*.bin"))  # the chunks went through the cache

    with pytest.raises(FileNotFoundError) as refused:
        ImageFolderDataModule(root="local:/nowhere/shards")
    message = str(refused.value)
    assert message.startswith("cannot read local:/nowhere/shards/effnet_shards.json (") and "\n" not in message
    assert message.endswith("check the URL, the network and the store's credentials, or give a local shard folder")


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
        [*shard_fit, "--trainer.callbacks+=probes.SignalAtStep"], tmp_path / "shards", check=False, env=env
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
    args += ["--trainer.max_epochs", "2", "--trainer.callbacks+=probes.SampleProbe"]
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


def test_the_docs_quote_the_shard_benchmarks_results():
    results = json.loads((ROOT / "docs" / "shards" / "results.json").read_text())
    page = (ROOT / "docs" / "running-at-scale.md").read_text()
    setup = f"| {results['folder_setup_s']:.1f} s | {results['shards_setup_s']:.3f} s | "
    setup += f"{results['folder_setup_s'] / results['shards_setup_s']:.0f}x shorter |"
    start = f"| {results['folder_first_step_s']:.1f} s | {results['shards_first_step_s']:.1f} s | "
    start += f"{results['folder_first_step_s'] / results['shards_first_step_s']:.1f}x shorter |"
    loader = f"| {results['folder_loader_img_s']:.0f} img/s | {results['shards_loader_img_s']:.0f} img/s | "
    loader += f"{results['shards_loader_img_s'] / results['folder_loader_img_s']:.2f}x |"
    for row in (setup, start, loader, f"| {results['prepare_s']:.0f} s |"):
        assert row in page, row
    assert results["folder_setup_s"] / results["shards_setup_s"] >= 10  # the target
    assert results["files"] == 100_000 and results["folder_train_images"] == results["shards_train_images"]
