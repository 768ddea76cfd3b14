"""Label files and multi-label training through the real CLI: a single-label file trains as the
same images in folders do, and a multi-label fit's val/map and thresholds are what
scikit-learn and brute force make of the checkpoint's own predictions."""

import csv
import json
import shutil

import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from tests.helpers.cli import CSV, ROOT, TINY, fit_summary, printed_metric, run_cli, train_losses
from tests.helpers.label_sets import write_set

STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "1"]


@pytest.mark.slow
def test_a_single_label_file_gives_the_folders_per_step_losses(tmp_path, small_root):
    rows = [
        {"image": str(path.relative_to(small_root)), "labels": path.parent.name, "split": path.parts[-3]}
        for path in sorted(small_root.glob("*/*/*.png"))
    ]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    losses, best = {}, {}
    for name, source in (
        ("folders", ["--data.root", small_root]),
        ("file", ["--data.label_file", tmp_path / "labels.csv", "--data.root", small_root]),
    ):
        (tmp_path / name).mkdir()
        out = run_cli(["fit", *source, *TINY, *CSV, *STEPS], tmp_path / name)
        losses[name] = train_losses(tmp_path / name)
        best[name] = fit_summary(out.stdout)[0]
    assert len(losses["file"]) >= 3 and losses["file"] == losses["folders"] and best["file"] == best["folders"]


@pytest.mark.slow
def test_a_multi_label_fit_scores_and_thresholds_match_its_predictions(tmp_path):
    label_file = write_set(tmp_path / "set", 96, seed=1, splits=True)
    val_dir = tmp_path / "val-images"
    val_dir.mkdir()
    with open(label_file, newline="") as f:
        val_rows = [row for row in csv.DictReader(f) if row["split"] == "val"]
    for row in val_rows:
        shutil.copy(tmp_path / "set" / row["image"], val_dir)
    # Fine-tuned from Lite0's packaged weights, so the scores are well apart (near-ties would let
    # another batch's last-bit rounding reorder them).
    finetune = [
        "--config",
        ROOT / "configs" / "finetune.yaml",
        "--model.variant",
        "lite0",
        "--model.weights",
        "imagenet",
    ]
    out = run_cli(
        ["fit", *finetune, "--data.label_file", label_file, *TINY, *CSV, "--trainer.max_epochs", "3"], tmp_path
    )
    assert "4 classes (multi-label)" in out.stderr + out.stdout
    record = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    best = record["best_model_path"]
    assert "-map0." in best and "fit done: best val/map" in out.stdout

    run_cli(
        ["predict", "--data.predict_root", val_dir, "--predictions.top_k", "4", *CSV, "--data.num_workers", "0"],
        tmp_path,
    )
    predicted = json.loads((tmp_path / "runs" / "predictions" / "predictions.json").read_text())
    classes = ["blue", "green", "red", "yellow"]
    probs = torch.zeros(len(val_rows), 4)
    names = sorted(row["image"].split("/")[-1] for row in val_rows)
    for item in predicted["predictions"]:
        for top in item["top_k"]:
            probs[names.index(item["path"].split("/")[-1]), classes.index(top["class"])] = top["prob"]
    truth = torch.zeros(len(val_rows), 4)
    for row in sorted(val_rows, key=lambda r: r["image"]):
        for c in row["labels"].split():
            truth[names.index(row["image"].split("/")[-1]), classes.index(c)] = 1
    assert record["best_score"] == pytest.approx(average_precision_score(truth, probs, average="macro"), abs=1e-4)

    thresholds = torch.load(tmp_path / best, weights_only=True)["thresholds"]
    for c in range(4):
        f1_at = [f1_score(truth[:, c], probs[:, c] >= t, zero_division=0) for t in probs[:, c].unique()]
        assert f1_score(truth[:, c], probs[:, c] >= thresholds[c], zero_division=0) == pytest.approx(max(f1_at))

    test = run_cli(["test", *CSV, "--data.num_workers", "0"], tmp_path)  # the fit's label file and checkpoint
    assert printed_metric(test.stdout, "test/map") == pytest.approx(record["best_score"], abs=1e-4)
    called = (probs >= torch.tensor(thresholds)).numpy()
    assert printed_metric(test.stdout, "test/f1_micro") == pytest.approx(
        f1_score(truth, called, average="micro"), abs=1e-4
    )


@pytest.mark.slow
def test_prepare_takes_a_label_file_and_its_shards_train_as_the_file_does(tmp_path):
    label_file = write_set(tmp_path / "set", 48, seed=2)
    (tmp_path / "set" / "images" / "0003.png").write_bytes(b"truncated")  # a row whose file is not an image
    run_cli(["prepare", "--data.label_file", label_file, "--output_dir", tmp_path / "shards"], tmp_path)
    info = json.loads((tmp_path / "shards" / "effnet_shards.json").read_text())
    assert info["multilabel"] and info["class_names"] == ["blue", "green", "red", "yellow"]
    assert list(info["bad_files"]) == [str(tmp_path / "set" / "images" / "0003.png")]
    losses = {}
    for name, source in (
        ("file", ["--data.label_file", label_file]),
        ("from-shards", ["--data.root", tmp_path / "shards"]),
    ):
        (tmp_path / name).mkdir()
        out = run_cli(["fit", *source, *TINY, *CSV, *STEPS], tmp_path / name)
        assert "4 classes (multi-label)" in out.stdout + out.stderr
        losses[name] = train_losses(tmp_path / name)
    assert len(losses["file"]) >= 3 and losses["file"] == losses["from-shards"]
