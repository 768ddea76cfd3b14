"""Label files and multi-label training through the real CLI: a single-label file trains as the
same images in folders do, and a multi-label fit's val/map and thresholds are what
scikit-learn and brute force make of the checkpoint's own predictions."""

import csv
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score

from tests.helpers import wandb_offline
from tests.helpers.cli import CSV, ROOT, TINY, fit_summary, printed_metric, run_cli, train_losses
from tests.helpers.fault_doc import expect
from tests.helpers.label_sets import write_set
from tests.helpers.serving import ServeProcess, post

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
    out = run_cli(["fit", *finetune, "--data.label_file", label_file, *TINY, "--trainer.max_epochs", "3"], tmp_path)
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

    assert predicted["thresholds"] == dict(zip(classes, thresholds))
    for item in predicted["predictions"]:  # the labels called: each class at or above its threshold
        scores = {top["class"]: top["prob"] for top in item["top_k"]}
        assert item["labels"] == [c for c in classes if scores[c] >= predicted["thresholds"][c]]
    with open(tmp_path / "runs" / "predictions" / "predictions.csv", newline="") as f:
        assert [row["labels"].split() for row in csv.DictReader(f)] == [i["labels"] for i in predicted["predictions"]]

    # Per class: AP, the threshold, and F1 at it, as scikit-learn makes them of the predictions.
    expected = [
        {
            "class": name,
            "images": int(truth[:, c].sum()),
            "ap": average_precision_score(truth[:, c], probs[:, c]),
            "threshold": thresholds[c],
            "f1": f1_score(truth[:, c], probs[:, c] >= thresholds[c]),
        }
        for c, name in enumerate(classes)
    ]
    (fit_run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    epochs = [h for h in wandb_offline.history(fit_run) if "val/per_class/path" in h]
    assert len(epochs) == 3  # one per validation (not the sanity check)
    best_epoch = epochs[int(Path(best).name.split("epoch")[1][:2])]  # the checkpoint's validation
    assert_per_class(table_rows(fit_run, best_epoch["val/per_class/path"]), expected)
    assert best_epoch["val/precision_recall/_type"] == "image-file"
    for caption in best_epoch["val/predictions/captions"]:  # every label called and every true one
        called_names, true_names = (part.split() for part in caption.removeprefix("pred ").split(" / true "))
        assert set(called_names) <= {*classes, "none"} and 1 <= len(true_names) and set(true_names) <= set(classes)

    test = run_cli(["test", "--data.num_workers", "0"], tmp_path)  # the fit's label file and checkpoint
    assert printed_metric(test.stdout, "test/map") == pytest.approx(record["best_score"], abs=1e-4)
    called = (probs >= torch.tensor(thresholds)).numpy()
    assert printed_metric(test.stdout, "test/f1_micro") == pytest.approx(
        f1_score(truth, called, average="micro"), abs=1e-4
    )
    # The evaluation report next to the checkpoint (and in W&B), at the checkpoint's thresholds.
    base = str(tmp_path / Path(best).with_suffix(""))
    with open(f"{base}.test-per-class.csv", newline="") as f:
        reported = list(csv.DictReader(f))
    assert list(reported[0]) == ["class", "images", "ap", "threshold", "precision", "recall", "f1"]
    assert_per_class(reported, expected)
    report = Path(f"{base}.test-report.md").read_text()
    assert f"{len(val_rows)} images, mAP {record['best_score']:.4f}" in report and report.count("\n| ") == 5
    with Image.open(f"{base}.test-precision_recall.png") as img:
        assert img.size[0] > 300 and img.size[1] > 300
    test_run = next(r for r in (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb") if r != fit_run)
    (logged,) = [h for h in wandb_offline.history(test_run) if "test/per_class/path" in h]
    assert table_rows(test_run, logged["test/per_class/path"]) == reported and "test/precision_recall/path" in logged

    # Two-process DDP: the report and the logged scores share one gathering of both processes'
    # scores, and every image counts once (the fit's best validation again).
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    validated = run_cli(["validate", "--ckpt_path", "best", *ddp, *CSV, "--data.num_workers", "0"], tmp_path)
    assert printed_metric(validated.stdout, "val/map") == pytest.approx(record["best_score"], abs=1e-4)
    with open(f"{base}.val-per-class.csv", newline="") as f:
        assert_per_class(list(csv.DictReader(f)), expected)

    # The export carries the thresholds; its INT8 check compares mAP; predict --onnx applies them.
    export = [
        "export",
        "--formats",
        "[onnx, onnx_int8]",
        "--output_dir",
        tmp_path / "export",
        *CSV,
        "--data.num_workers",
        "0",
        "--int8_max_drop",
        "100",  # the drop is measured here, whatever it is
    ]
    out = run_cli(export, tmp_path)
    info = json.loads((tmp_path / "export" / "model.json").read_text())
    assert info["task"] == "multilabel" and info["thresholds"] == dict(zip(classes, thresholds))
    assert info["int8"]["fp32_map"] == pytest.approx(record["best_score"], abs=1e-4)
    assert abs(info["int8"]["drop_points"]) < 5 and "mAP " in out.stdout
    onnx_dir = tmp_path / "onnx-predictions"
    args = ["--data.predict_root", val_dir, "--predictions.top_k", "4", "--predictions.output_dir", onnx_dir]
    run_cli(["predict", "--onnx", tmp_path / "export" / "model.onnx", *args, *CSV, "--data.num_workers", "0"], tmp_path)
    from_onnx = json.loads((onnx_dir / "predictions.json").read_text())
    assert from_onnx["thresholds"] == predicted["thresholds"]
    for a, b in zip(from_onnx["predictions"], predicted["predictions"], strict=True):
        assert a["path"] == b["path"] and a["labels"] == b["labels"]
        assert [t["prob"] for t in a["top_k"]] == pytest.approx([t["prob"] for t in b["top_k"]], abs=1e-4)

    # serve (the fit's best checkpoint) answers with the labels predict called.
    served = ServeProcess(["--trainer.enable_progress_bar", "false", *CSV], tmp_path)
    try:
        first = predicted["predictions"][0]
        served.first_answers((val_dir / Path(first["path"]).name).read_bytes())
        for item in predicted["predictions"][:6]:
            status, answer, _ = post(served.port, Path(item["path"]).read_bytes(), "image/png", query="?k=4")
            assert status == 200 and answer["labels"] == item["labels"], answer
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0, served.log()


@pytest.mark.slow
def test_prepare_takes_a_label_file_and_its_shards_train_as_the_file_does(tmp_path):
    label_file = write_set(tmp_path / "set", 48, seed=2)
    (tmp_path / "set" / "images" / "0003.png").write_bytes(b"truncated")  # a row whose file is not an image
    with open(label_file, "a") as f:
        f.write("images/missing.png,red\nimages/0005.png,\n")  # lines 50 and 51
    run_cli(["prepare", "--data.label_file", label_file, "--output_dir", tmp_path / "shards"], tmp_path)
    info = json.loads((tmp_path / "shards" / "effnet_shards.json").read_text())
    assert info["multilabel"] and info["class_names"] == ["blue", "green", "red", "yellow"]
    assert info["bad_files"] == {
        f"{label_file}:50": f"{tmp_path}/set/images/missing.png: no such file",
        f"{label_file}:51": "no label",
        str(tmp_path / "set" / "images" / "0003.png"): "not an image PIL can read",
    }
    assert sum(len(info["splits"][split]["labels"]) for split in ("train", "val")) == 47  # 48 rows, one unreadable
    losses = {}
    for name, source in (
        ("file", ["--data.label_file", label_file]),
        ("from-shards", ["--data.root", tmp_path / "shards"]),
    ):
        (tmp_path / name).mkdir()
        out = run_cli(["fit", *source, *TINY, *CSV, *STEPS], tmp_path / name)
        assert "4 classes (multi-label)" in out.stdout + out.stderr
        if name == "file":
            listed = out.stderr[out.stderr.index("leaving out") :].splitlines()[:4]
            assert listed == [
                f"leaving out 3 rows of {label_file}:",
                f"  line 5: {tmp_path}/set/images/0003.png: not an image PIL can read",
                f"  line 50: {tmp_path}/set/images/missing.png: no such file",
                "  line 51: no label",
            ]
            expect("label-file-bad-rows", "leaving out 3 rows of", "line 50:", "no such file", "no label")
        losses[name] = train_losses(tmp_path / name)
    assert len(losses["file"]) >= 3 and losses["file"] == losses["from-shards"]


def table_rows(run: Path, path: str) -> list[dict]:
    """A W&B table of an offline run as rows of strings, as csv.DictReader gives a CSV file."""
    table = json.loads((run.parent / "files" / path).read_text())
    return [{k: str(v) for k, v in zip(table["columns"], row)} for row in table["data"]]


def assert_per_class(rows: list[dict], expected: list[dict]) -> None:
    assert [r["class"] for r in rows] == [e["class"] for e in expected]
    for row, want in zip(rows, expected):
        assert int(row["images"]) == want["images"], row
        for key in ("ap", "threshold", "f1"):
            assert float(row[key]) == pytest.approx(want[key], abs=1e-4), (key, row)
