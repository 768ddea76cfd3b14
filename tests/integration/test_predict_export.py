"""predict, export and the evaluation report through the real CLI, on a checkpoint trained in
the test, on the packaged real Lite0 ImageNet weights, and with a folder of the wrong classes."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from effnet_lightning import create_model
from effnet_lightning.data import demo
from effnet_lightning.data.datamodule import eval_transform, load_rgb
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers import wandb_offline
from tests.helpers.cli import CSV, TINY, last_error_line, printed_metric, run_cli
from tests.helpers.exports import reload_and_compare

CLASSES = sorted(demo.CLASSES)


@pytest.fixture(scope="module")
def trained(small_root, tmp_path_factory):
    """A fit of two short epochs; returns (working folder, best checkpoint)."""
    cwd = tmp_path_factory.mktemp("trained")
    run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *TINY,
            *CSV,
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "4",
            "--model.warmup_epochs",
            "0",
        ],
        cwd,
    )
    best = json.loads((cwd / "runs" / "latest_fit.json").read_text())["best_model_path"]
    return cwd, cwd / best


@pytest.fixture(scope="module")
def images_to_predict(demo_root, tmp_path_factory):
    """7 images, some in a subfolder; a hidden file, a hidden folder and a text file to skip."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "more").mkdir()
    (root / ".cache").mkdir()
    sources = [min((demo_root / "test" / name).glob("*.png")) for name in CLASSES[:7]]
    for i, src in enumerate(sources):
        shutil.copy(src, root / ("more" if i % 2 else "") / f"img{i}.png")
    shutil.copy(sources[0], root / ".hidden.png")
    shutil.copy(sources[0], root / ".cache" / "thumb.png")
    (root / "notes.txt").write_text("not an image")
    return root


def read_predictions(folder: Path) -> tuple[list[dict], dict]:
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((folder / "predictions.json").read_text())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.coffee()).save(root / "coffee.jpg", quality=95)
    Image.fromarray(skimage_data.chelsea()).convert("RGBA").save(root / "chelsea.png")
    return root


@pytest.mark.slow
def test_predict_writes_one_row_per_image_with_valid_classes(trained, images_to_predict):
    cwd, ckpt = trained
    out = run_cli(
        [
            "predict",
            "--ckpt_path",
            ckpt,
            "--data.predict_root",
            images_to_predict,
            *TINY,
            *CSV,
            "--predictions.top_k",
            "3",
        ],
        cwd,
    )
    rows, data = read_predictions(cwd / "runs" / "predictions")
    expected = sorted(str(p) for p in images_to_predict.rglob("img*.png"))
    assert [r["path"] for r in rows] == expected and len(expected) == 7
    assert "predict: 7 images, top-3 classes written to runs/predictions/predictions.csv" in out.stdout
    for row, entry in zip(rows, data["predictions"]):
        classes = [row[f"class_{i}"] for i in (1, 2, 3)]
        probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
        assert set(classes) <= set(CLASSES) and len(set(classes)) == 3
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        assert entry["path"] == row["path"] and [e["class"] for e in entry["top_k"]] == classes
        assert [e["prob"] for e in entry["top_k"]] == pytest.approx(probs, abs=1e-6)
    assert data["images"] == 7 and data["checkpoint"] == str(ckpt)
    # the same probabilities as the checkpoint's network on the same preprocessing
    module = EfficientNetModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    pre = Preprocessing(**module.hparams.preprocessing)
    with torch.no_grad():
        probs = module(eval_transform(pre)(load_rgb(rows[0]["path"]))[None]).softmax(1)[0]
    assert float(probs.max()) == pytest.approx(float(rows[0]["prob_1"]), abs=1e-5)
    assert CLASSES[int(probs.argmax())] == rows[0]["class_1"]


@pytest.mark.slow
def test_predict_under_two_process_ddp_writes_each_image_once(trained, images_to_predict, tmp_path):
    cwd, ckpt = trained
    args = ["predict", "--ckpt_path", ckpt, "--data.predict_root", images_to_predict, *TINY, *CSV]
    run_cli([*args, "--predictions.output_dir", tmp_path / "one"], cwd)
    run_cli(
        [
            *args,
            "--predictions.output_dir",
            tmp_path / "two",
            "--trainer.accelerator",
            "cpu",
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
        ],
        cwd,
    )
    single, _ = read_predictions(tmp_path / "one")
    double, _ = read_predictions(tmp_path / "two")
    assert len(double) == 7 and len({r["path"] for r in double}) == 7  # 7 images on 2 ranks: none twice
    assert [r["path"] for r in double] == [r["path"] for r in single]
    assert [r["class_1"] for r in double] == [r["class_1"] for r in single]
    assert [float(r["prob_1"]) for r in double] == pytest.approx([float(r["prob_1"]) for r in single], abs=1e-5)


@pytest.mark.slow
def test_pretrained_lite0_labels_real_photos_through_predict_without_a_checkpoint(photos, trained, tmp_path):
    cwd, _ = trained  # a fit is recorded here: the typed --model.weights win over it
    run_cli(
        [
            "predict",
            "--model.variant",
            "lite0",
            "--model.weights",
            "imagenet",
            "--data.predict_root",
            photos,
            "--predictions.output_dir",
            tmp_path,
            "--trainer.enable_progress_bar",
            "false",
            *CSV,
        ],
        cwd,
    )
    rows, data = read_predictions(tmp_path)
    top1 = {Path(r["path"]).name: r["class_1"] for r in rows}
    print(f"lite0 ImageNet predict: {[(r['path'][-11:], r['class_1'], r['prob_1']) for r in rows]}")
    assert top1 == {"chelsea.png": top1["chelsea.png"], "coffee.jpg": "espresso"}
    assert top1["chelsea.png"] in ("tiger cat", "tabby", "Egyptian cat")
    assert data["weights"] == "imagenet" and data["checkpoint"] is None


@pytest.mark.slow
def test_export_cli_from_a_checkpoint_and_from_imagenet_weights(trained, photos, tmp_path):
    cwd, ckpt = trained
    out = run_cli(["export", "--ckpt_path", ckpt, "--output_dir", tmp_path / "trained", *CSV], cwd)
    for fmt in ("onnx", "torchscript", "safetensors"):
        assert f"export: {fmt:<11} {tmp_path / 'trained'}" in out.stdout
    info = json.loads((tmp_path / "trained" / "model.json").read_text())
    module = EfficientNetModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert info["class_names"] == CLASSES and info["preprocessing"] == module.hparams.preprocessing
    assert info["source"] == str(ckpt) and max(info["max_abs_logit_difference"].values()) < 1e-4
    pre = Preprocessing(**info["preprocessing"])
    x = torch.stack([eval_transform(pre)(load_rgb(str(p))) for p in sorted((photos).iterdir())])
    assert max(reload_and_compare(tmp_path / "trained", module.model, x).values()) < 1e-4
    # one name without brackets; a wrong name, or a file as the folder: one line each, the file kept
    run_cli(["export", "--ckpt_path", ckpt, "--formats", "safetensors", "--output_dir", tmp_path / "one", *CSV], cwd)
    assert json.loads((tmp_path / "one" / "model.json").read_text())["files"] == {"safetensors": "model.safetensors"}
    bad = run_cli(["export", "--ckpt_path", ckpt, "--formats", "[onnx, tflite]", *CSV], cwd, check=False)
    assert bad.returncode == 2 and last_error_line(bad) == (
        "error: unknown export formats ['tflite']: choose from onnx, torchscript, safetensors, hub, onnx_int8"
    )
    (tmp_path / "a-file").write_text("mine")
    bad = run_cli(["export", "--ckpt_path", ckpt, "--output_dir", tmp_path / "a-file", *CSV], cwd, check=False)
    assert bad.returncode == 2 and last_error_line(bad) == (
        f"error: --output_dir {tmp_path / 'a-file'} is a file: give a folder (it is made if missing)"
    )
    assert (tmp_path / "a-file").read_text() == "mine"

    # the real ImageNet Lite0, exported and run with onnxruntime on a photo, preprocessed as model.json says
    run_cli(
        [
            "export",
            "--model.variant",
            "lite0",
            "--model.weights",
            "imagenet",
            "--output_dir",
            tmp_path / "lite0",
            "--formats",
            "[onnx]",
            *CSV,
        ],
        tmp_path,
    )
    info = json.loads((tmp_path / "lite0" / "model.json").read_text())
    assert info["files"] == {"onnx": "model.onnx"} and len(info["class_names"]) == 1000
    image = eval_transform(Preprocessing(**info["preprocessing"]))(load_rgb(str(photos / "coffee.jpg")))[None]
    session = onnxruntime.InferenceSession(str(tmp_path / "lite0" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": image.numpy()})[0][0]
    assert info["class_names"][int(np.argmax(logits))] == "espresso"


@pytest.mark.slow
def test_test_writes_a_per_class_report_and_confusion_matrix_next_to_the_checkpoint(trained, small_root, tmp_path):
    cwd, ckpt = trained
    work = tmp_path / "work"
    shutil.copytree(cwd / "runs", work / "runs")  # a W&B run of its own, in a folder of its own
    ckpt = work / ckpt.relative_to(cwd)
    out = run_cli(["test", "--ckpt_path", ckpt, "--data.root", small_root, *TINY], work)
    base = str(ckpt.with_suffix(""))
    with open(f"{base}.test-per-class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == CLASSES
    assert [int(r["images"]) for r in rows] == [8] + [7] * 9  # the 71 validation images (no test/ folder)
    accuracy = sum(int(r["correct"]) for r in rows) / 71
    assert printed_metric(out.stdout, "test/acc") == pytest.approx(accuracy, abs=1e-6)
    for r in rows:
        assert float(r["accuracy"]) == pytest.approx(int(r["correct"]) / int(r["images"]))
    report = Path(f"{base}.test-report.md").read_text()
    assert f"71 images, accuracy {accuracy:.4f}" in report and report.count("\n| ") == 11
    with Image.open(f"{base}.test-confusion.png") as img:
        assert img.size[0] > 300 and img.size[1] > 300
    runs = list((work / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    history = [h for run in runs for h in wandb_offline.history(run)]
    assert any("test/per_class/_type" in h for h in history) and any("test/confusion/_type" in h for h in history)


@pytest.mark.slow
def test_a_folder_with_other_classes_is_refused_on_predict_test_and_resume(
    trained, demo_root, images_to_predict, tmp_path
):
    cwd, ckpt = trained
    other = tmp_path / "other"
    for name in ("apple", "pear"):
        (other / name).mkdir(parents=True)
        for src in sorted((demo_root / "val" / "star").glob("*.png"))[:3]:
            shutil.copy(src, other / name / src.name)
    expected = f"{other} has classes ['apple', 'pear'] but the model was trained on ['bar', 'circle', 'crescent'"
    for args in (
        ["predict", "--ckpt_path", ckpt, "--data.predict_root", images_to_predict],
        ["test", "--ckpt_path", ckpt],
        ["fit", "--ckpt_path", "last", "--trainer.max_epochs", "3"],
    ):
        line = last_error_line(run_cli([*args, "--data.root", other, *TINY, *CSV], cwd, check=False))
        assert line.startswith(f"error: {expected}") and "fine-tune with --model.weights CKPT" in line, line


@pytest.mark.slow
def test_predict_needs_images_and_known_class_names(trained, small_root, tmp_path):
    cwd, ckpt = trained
    line = last_error_line(run_cli(["predict", "--ckpt_path", ckpt, *TINY, *CSV], cwd, check=False))
    assert line == "error: predict needs images: pass --data.predict_root DIR"
    weights = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file(create_model("b0", num_classes=3).state_dict(), str(weights))
    line = last_error_line(
        run_cli(["predict", "--model.weights", weights, "--data.predict_root", tmp_path, *CSV], tmp_path, check=False)
    )
    assert line.startswith(f"error: predict: the class names of {weights} are unknown: pass --ckpt_path")
    # ImageNet weights have no classifier for a 10-class folder: testing them is refused
    line = last_error_line(
        run_cli(
            ["test", "--model.variant", "lite0", "--model.weights", "imagenet", "--data.root", small_root, *TINY, *CSV],
            tmp_path,
            check=False,
        )
    )
    assert line == (
        "error: test: the network has no trained classifier for these 10 classes (weights: imagenet): "
        "pass --ckpt_path of a checkpoint trained on them"
    )


@pytest.mark.slow
def test_validate_test_and_predict_run_the_folded_network_and_fit_never_does(
    trained, small_root, images_to_predict, tmp_path
):
    cwd, ckpt = trained
    probe = tmp_path / "probe.jsonl"
    env = {**os.environ, "PROBE_FILE": str(probe)}
    common = [
        "--ckpt_path",
        ckpt,
        "--data.root",
        small_root,
        *TINY,
        *CSV,
        "--trainer.callbacks+=tests.helpers.probes.NetworkFormProbe",
    ]
    folded = run_cli(["test", *common], cwd, env=env)
    plain = run_cli(["test", *common, "--model.fold_bn", "false"], cwd, env=env)
    assert printed_metric(folded.stdout, "test/acc") == printed_metric(plain.stdout, "test/acc")
    assert printed_metric(folded.stdout, "test/loss") == pytest.approx(
        printed_metric(plain.stdout, "test/loss"), abs=1e-4
    )
    run_cli(["validate", *common], cwd, env=env)
    run_cli(["predict", *common, "--data.predict_root", images_to_predict], cwd, env=env)
    fit = ["fit", "--data.root", small_root, *TINY, *CSV, "--trainer.max_epochs", "1"]
    run_cli(
        [*fit, "--trainer.limit_train_batches", "1", "--trainer.callbacks+=tests.helpers.probes.NetworkFormProbe"],
        tmp_path,
        env=env,
    )
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    forms = {}
    for r in records:
        forms.setdefault((r["fn"], r["form"]), set()).add(r["batchnorms"] == 0)
        assert r["model_batchnorms"] > 0  # the module's own network, the one checkpointed, stays plain
    assert forms == {
        ("test", "folded"): {True},
        ("test", "plain"): {False},
        ("validate", "folded"): {True},
        ("predict", "folded"): {True},
        ("fit", "plain"): {False},
    }


@pytest.mark.slow
def test_predict_from_an_exported_onnx_gives_the_checkpoints_top1_for_every_image(trained, images_to_predict, tmp_path):
    cwd, ckpt = trained
    run_cli(["export", "--ckpt_path", ckpt, "--formats", "[onnx]", "--output_dir", tmp_path / "exp"], cwd)
    common = ["predict", "--data.predict_root", images_to_predict, *CSV]
    run_cli([*common, "--ckpt_path", ckpt, *TINY, "--predictions.output_dir", tmp_path / "ckpt"], cwd)
    # nothing about the model typed: classes, size and normalisation come from model.json
    onnx = tmp_path / "exp" / "model.onnx"
    out = run_cli([*common, "--onnx", onnx, "--predictions.output_dir", tmp_path / "onnx"], cwd)
    assert "predict: 7 images, top-5 classes written to" in out.stdout
    from_ckpt, _ = read_predictions(tmp_path / "ckpt")
    from_onnx, data = read_predictions(tmp_path / "onnx")
    assert [r["path"] for r in from_onnx] == [r["path"] for r in from_ckpt] and len(from_onnx) == 7
    assert [r["class_1"] for r in from_onnx] == [r["class_1"] for r in from_ckpt]
    for a, b in zip(from_onnx, from_ckpt):
        assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=1e-4)
    assert data["weights"] == str(onnx) and data["checkpoint"] is None
    # the flag reaches the ONNX file's predictor (what it computes: the test below)
    flip = ["--model.test_time_flip", "true"]
    run_cli([*common, "--ckpt_path", ckpt, *TINY, *flip, "--predictions.output_dir", tmp_path / "ckpt-flip"], cwd)
    run_cli([*common, "--onnx", onnx, *flip, "--predictions.output_dir", tmp_path / "onnx-flip"], cwd)
    flipped_ckpt, flipped_onnx = (
        read_predictions(tmp_path / "ckpt-flip")[0],
        read_predictions(tmp_path / "onnx-flip")[0],
    )
    assert [r["class_1"] for r in flipped_onnx] == [r["class_1"] for r in flipped_ckpt]
    for a, b in zip(flipped_onnx, flipped_ckpt):
        assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=1e-4)
    # an export whose model.json went missing, or a size the file does not take: one line each
    shutil.copy(onnx, tmp_path / "alone.onnx")
    bad = run_cli([*common, "--onnx", tmp_path / "alone.onnx"], cwd, check=False)
    assert bad.returncode == 2 and last_error_line(bad) == (
        f"error: --onnx {tmp_path / 'alone.onnx'}: no model.json beside it, so its classes and preprocessing are "
        f"unknown: keep the export's folder together"
    )
    bad = run_cli([*common, "--onnx", onnx, "--data.image_size", "96"], cwd, check=False)
    assert bad.returncode == 2 and last_error_line(bad) == (
        "error: the ONNX file takes 64-px images (its model.json) but the data module crops 96 px: leave "
        "--data.image_size and --data.eval_image_size out"
    )
    # a file its model.json does not list (an earlier export's), one that is not ONNX, and a
    # model.json naming fewer classes than the file has outputs: one line each, no predictions
    shutil.copy(onnx, tmp_path / "exp" / "earlier.onnx")
    bad = run_cli([*common, "--onnx", tmp_path / "exp" / "earlier.onnx"], cwd, check=False)
    assert bad.returncode == 2 and last_error_line(bad) == (
        f"error: --onnx {tmp_path / 'exp' / 'earlier.onnx'}: {tmp_path / 'exp' / 'model.json'} describes another "
        f"export (its files: model.onnx), so its classes may not be this file's: export again with the formats you need"
    )
    info = json.loads((tmp_path / "exp" / "model.json").read_text())
    for name, onnx_bytes, names in (
        ("truncated", onnx.read_bytes()[:1000], info["class_names"]),
        ("fewer", onnx.read_bytes(), info["class_names"][:-1]),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(onnx_bytes)
        (tmp_path / name / "model.json").write_text(json.dumps({**info, "class_names": names}))
    bad = run_cli([*common, "--onnx", tmp_path / "truncated" / "model.onnx"], cwd, check=False)
    line = last_error_line(bad)
    assert bad.returncode == 2 and line.startswith(f"error: --onnx {tmp_path / 'truncated' / 'model.onnx'} is not a ")
    assert "readable ONNX file (" in line and line.endswith("): export it again")
    bad = run_cli([*common, "--onnx", tmp_path / "fewer" / "model.onnx"], cwd, check=False)
    n = len(info["class_names"])
    assert bad.returncode == 2 and last_error_line(bad) == (
        f"error: --onnx {tmp_path / 'fewer' / 'model.onnx'} has {n} outputs but its model.json names {n - 1} "
        f"classes: export the network again"
    )


@pytest.mark.slow
def test_int8_export_is_calibrated_measured_and_refused_above_the_allowed_drop(
    trained, small_root, images_to_predict, tmp_path
):
    cwd, ckpt = trained
    args = ["export", "--ckpt_path", ckpt, "--data.root", small_root, *TINY, "--formats", "[onnx, onnx_int8]"]
    out = run_cli([*args, "--calibration_images", "20", "--output_dir", tmp_path / "int8"], cwd)
    info = json.loads((tmp_path / "int8" / "model.json").read_text())
    quality = info["int8"]
    assert info["files"] == {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}
    files = sorted(p.name for p in (tmp_path / "int8").iterdir())
    assert files == ["config.yaml", "model.int8.onnx", "model.json", "model.onnx"]
    assert quality["calibration_images"] == 20 and quality["images"] == 71  # every validation image
    # the printed and recorded accuracy is the file's own, recomputed here on the validation images
    pre = Preprocessing(**info["preprocessing"])
    paths = sorted((small_root / "val").rglob("*.png"))
    images = torch.stack([eval_transform(pre)(load_rgb(p)) for p in paths])
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    top1 = {}
    for name in ("model.onnx", "model.int8.onnx"):
        session = onnxruntime.InferenceSession(str(tmp_path / "int8" / name))
        top1[name] = torch.from_numpy(session.run(None, {"images": images.numpy()})[0]).argmax(1)
    assert quality["fp32_accuracy"] == pytest.approx((top1["model.onnx"] == labels).float().mean().item(), abs=1e-6)
    assert quality["int8_accuracy"] == pytest.approx(
        (top1["model.int8.onnx"] == labels).float().mean().item(), abs=1e-6
    )
    agreement = (top1["model.onnx"] == top1["model.int8.onnx"]).float().mean().item()
    assert quality["top1_agreement"] == pytest.approx(agreement, abs=1e-6)
    assert quality["drop_points"] == pytest.approx(100 * (quality["fp32_accuracy"] - quality["int8_accuracy"]))
    assert f"top-1 agreement with fp32 {quality['top1_agreement']:.4f}" in out.stdout
    assert f"a drop of {quality['drop_points']:.2f} points" in out.stdout
    # an INT8 file runs through predict like the fp32 one
    run_cli(
        [
            "predict",
            "--onnx",
            tmp_path / "int8" / "model.int8.onnx",
            "--data.predict_root",
            images_to_predict,
            *CSV,
            "--predictions.output_dir",
            tmp_path / "pred",
        ],
        cwd,
    )
    assert len(read_predictions(tmp_path / "pred")[0]) == 7
    # a drop above the allowed one (here: any drop above -100 points) writes nothing
    bad = run_cli([*args, "--int8_max_drop", "-100", "--output_dir", tmp_path / "refused"], cwd, check=False)
    assert last_error_line(bad).startswith("error: INT8 quantization drops top-1 by ")
    assert "(allowed: --int8_max_drop -100): nothing was written; export onnx (fp32) instead" in last_error_line(bad)
    assert not list((tmp_path / "refused").glob("*.onnx")) and not (tmp_path / "refused" / "model.json").exists()
