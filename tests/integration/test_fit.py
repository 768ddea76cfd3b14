"""`fit` through the real CLI on the demo images: what it learns, checkpoints and logs, resuming,
two-process DDP, refused flags, the always-on callbacks, and the input size each variant trains at."""

import csv
import json
import os
import re

import pytest
import torch

from effnet_lightning.data import demo
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers import wandb_offline
from tests.helpers.cli import CSV, ROOT, TINY, last_error_line, printed_metric, run_cli


def test_automatic_optimizers_are_refused_in_one_line(tmp_path):
    expected = "error: --optimizer is not supported: the optimizer is --model.optimizer (adamw, sgd or rmsprop_tf)"
    assert last_error_line(run_cli(["fit", "--optimizer", "Adam"], tmp_path, check=False)).startswith(expected)
    (tmp_path / "opt.yaml").write_text("lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n")
    line = last_error_line(run_cli(["fit", "--config", tmp_path / "opt.yaml"], tmp_path, check=False))
    assert line.startswith("error: --lr_scheduler is not supported")


@pytest.mark.slow
def test_always_on_callbacks_switch_off_and_rich_progress_bar_works(tmp_path, small_root):
    out = run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *TINY[:6],
            *CSV,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--summary.enabled",
            "false",
            "--lr_monitor.enabled",
            "false",
            "--wandb_report.enabled",
            "false",
            "--trainer.callbacks",
            "RichProgressBar",
        ],
        tmp_path,
    )
    assert "fit done:" not in out.stdout  # the summary is off
    metrics = next((tmp_path / "runs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert "val/acc" in metrics and not any(name.startswith("lr-") for name in metrics)  # no learning-rate log
    assert "Epoch 0" in out.stdout  # the rich bar drew


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_default_fit_learns_checkpoints_and_logs_to_wandb_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc: no W&B credentials, so it must go offline by itself
    out = run_cli(
        [
            "fit",
            "--config",
            ROOT / "configs" / "default.yaml",
            "--trainer.max_epochs",
            "10",
            "--trainer.log_every_n_steps",
            "5",
            "--trainer.enable_progress_bar",
            "false",
        ],
        tmp_path,
        env=env,
        timeout=2300,
    )
    assert (tmp_path / "data" / "demo" / demo.DONE_MARKER).exists()
    assert "set_vital" not in out.stderr  # a dependency's deprecation notice, nothing a user can act on
    record = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    best, last = tmp_path / record["best_model_path"], tmp_path / record["last_model_path"]
    assert best.is_file() and last.name == "last.ckpt" and last.is_file()
    summary = re.search(
        r"fit done: best val/acc ([0-9.]+) at (\S+), wall time \S+, training ([0-9.]+) img/s "
        r"\(([0-9]+)% waiting for data\)",
        out.stdout,
    )
    assert summary and float(summary.group(3)) > 0 and summary.group(2) == record["best_model_path"]
    assert 0 <= int(summary.group(4)) <= 100

    ckpt = torch.load(best, weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["class_names"] == sorted(demo.CLASSES) and hp["num_classes"] == 10
    assert hp["preprocessing"]["crop_size"] == 64 and hp["preprocessing"]["interpolation"] == "bicubic"

    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = wandb_offline.history(runs[0])
    val_acc = [h["val/acc"] for h in history if "val/acc" in h]
    assert len(val_acc) == 10 and max(val_acc) == pytest.approx(float(summary.group(1)), abs=1e-4)
    assert any("lr-AdamW/pg1" in h for h in history) and any("train/loss_step" in h for h in history)
    assert any(h.get("val/predictions/count") == 16 for h in history)
    assert any("val/confusion_matrix_table/_type" in h for h in history)
    config = wandb_offline.config(runs[0])
    assert config["variant"] == "b0" and config["batch_size"] == 32 and config["preprocessing"]["crop_size"] == 64
    print(f"default fit on the demo (64 px, 10 epochs): val/acc per epoch {[round(a, 3) for a in val_acc]}")
    # Chance is 0.1; the recipe before identity-initialised residual blocks and 60-100% crops
    # reached about 0.2 in these 10 epochs (docs/from-scratch.md).
    assert max(val_acc) >= 0.5


@pytest.mark.slow
def test_resume_from_last_continues_at_the_same_step_with_the_same_optimizer_state(tmp_path, small_root):
    args = [
        "--data.root",
        small_root,
        *TINY,
        *CSV,
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_train_batches",
        "3",
    ]
    probe_file = tmp_path / "record.json"
    run_cli(
        ["fit", *args, "--trainer.max_epochs", "2", "--trainer.callbacks+=tests.helpers.probes.RecordProbe"],
        tmp_path,
        env={**os.environ, "PROBE_FILE": str(probe_file)},
    )
    # during epoch 1 the record already names epoch 0's last checkpoint: a crash then loses nothing
    assert json.loads(probe_file.read_text())["last_global_step"] == 3
    record = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    saved = torch.load(tmp_path / record["last_model_path"], weights_only=True)
    assert saved["global_step"] == 6
    resumed = probe(tmp_path, ["--ckpt_path", "last", *args, "--trainer.max_epochs", "3"], tmp_path)
    assert resumed["global_step"] == 6
    expected = {
        str(k): [float(t.double().sum()) for t in v.values() if torch.is_tensor(t)]
        for k, v in saved["optimizer_states"][0]["state"].items()
    }
    assert resumed["optimizer_state"] == expected and len(expected) > 100
    assert resumed["lr"] == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    # the resumed run checkpoints into the same folder and keeps its best checkpoints; the first
    # run's logs stay (the logger starts a new version)
    after = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    assert record["checkpoint_dir"] == "runs/version_0/checkpoints"
    assert (tmp_path / after["checkpoint_dir"]).resolve() == (tmp_path / record["checkpoint_dir"]).resolve()
    assert after["best_score"] >= record["best_score"] and (tmp_path / after["best_model_path"]).is_file()
    assert "val/acc" in (tmp_path / "runs" / "version_0" / "metrics.csv").read_text()
    # a best checkpoint deleted since: the next resume forgets it
    (tmp_path / after["best_model_path"]).unlink()
    run_cli(["fit", "--ckpt_path", "last", *args, "--trainer.max_epochs", "4"], tmp_path)
    final = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    assert (tmp_path / final["best_model_path"]).is_file() and final["best_model_path"] != after["best_model_path"]
    # the recorded last checkpoint deleted: a clear error, not a silent fresh start
    (tmp_path / final["last_model_path"]).unlink()
    out = run_cli(["fit", "--ckpt_path", "last", *args], tmp_path, check=False)
    assert out.returncode == 2 and "the recorded checkpoint" in out.stderr and "is missing" in out.stderr


@pytest.mark.slow
def test_two_process_ddp_on_cpu_fits_and_validates_like_one_process(tmp_path, small_root):
    args = ["--data.root", small_root, *TINY, *CSV]
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    run_cli(["fit", *args, *ddp, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"], tmp_path)
    last = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["last_model_path"]
    # Two steps leave every image with the same prediction, and equal metrics would prove
    # nothing: give the saved network varied outputs (residual branches switched on, as the
    # two steps have hardly moved their zero-initialised scales; BN statistics of real
    # activations; a random head).
    checkpoint = torch.load(tmp_path / last, weights_only=True)
    module = EfficientNetModule(**{k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")})
    module.load_state_dict(checkpoint["state_dict"])
    torch.manual_seed(0)
    with torch.no_grad():
        for block in module.model.blocks:
            block.project.bn.weight.fill_(1.0)
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # running stats = those of the next batch
        module.train()(torch.randn(32, 3, 64, 64))
        module.model.classifier.weight.normal_()
    checkpoint["state_dict"] = module.state_dict()
    ckpt = tmp_path / "varied.ckpt"
    torch.save(checkpoint, ckpt)
    per_class = tmp_path / "varied.val-per-class.csv"
    single = run_cli(["validate", *args, "--ckpt_path", ckpt], tmp_path).stdout
    single_rows = list(csv.DictReader(per_class.open()))
    double = run_cli(["validate", *args, *ddp, "--ckpt_path", ckpt], tmp_path).stdout
    double_rows = list(csv.DictReader(per_class.open()))
    for metric in ("val/acc", "val/acc_top5"):
        print(
            f"{metric} on 71 images: 1 process {printed_metric(single, metric)}, 2 processes {printed_metric(double, metric)}"
        )
        assert printed_metric(double, metric) == printed_metric(single, metric)
    # every image once under DDP: the same per-class counts as one process
    assert double_rows == single_rows and sum(int(r["images"]) for r in single_rows) == 71
    # not the counts a constant prediction gives (classes hold 7 or 8 of the 71 images), and the
    # predictions really vary: several classes are predicted (a class never predicted has no precision)
    assert round(printed_metric(single, "val/acc") * 71) not in (7, 8)
    assert sum(r["precision"] != "nan" for r in single_rows) >= 3


def test_fit_with_checkpointing_off_trains_and_writes_no_checkpoint(tmp_path, small_root):
    for switch in (["--trainer.enable_checkpointing", "false"], ["--checkpoint.enabled", "false"]):
        cwd = tmp_path / switch[0].strip("-")
        cwd.mkdir()
        args = ["fit", "--data.root", small_root, *TINY, *CSV, "--trainer.max_epochs", "1", *switch]
        out = run_cli([*args, "--trainer.limit_train_batches", "2"], cwd)
        assert "fit done: best val/acc" in out.stdout and "no checkpoint" in out.stdout
        assert not list(cwd.rglob("*.ckpt")) and list(cwd.rglob("metrics.csv"))


def test_bad_variant_is_a_clear_error(tmp_path):
    out = run_cli(["fit", "--model.variant", "b9"], tmp_path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown EfficientNet variant 'b9': choose one of b0, b1" in out.stderr.strip().splitlines()[-1]


def probe(tmp_path, args, cwd):
    probe_file = tmp_path / "probe.json"
    run_cli(
        ["fit", *args, "--trainer.callbacks+=tests.helpers.probes.TrainStartProbe"],
        cwd,
        env={**os.environ, "PROBE_FILE": str(probe_file)},
    )
    return json.loads(probe_file.read_text())


@pytest.mark.slow
def test_image_size_follows_the_variant_and_can_be_overridden(tmp_path, demo_root):
    # ("1" would parse as 1.0, a whole epoch: limits here are batch counts of 2)
    common = [
        "--data.root",
        demo_root,
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "2",
        *CSV,
    ]
    assert probe(tmp_path, ["--model.variant", "b3", *common], tmp_path)["input_shape"] == [2, 3, 300, 300]
    assert probe(tmp_path, ["--model.variant", "b3", "--data.image_size", "128", *common], tmp_path)["input_shape"] == [
        2,
        3,
        128,
        128,
    ]
    # a custom compound-scaled variant: 224 x 1.2^1 = 268.8, to a multiple of 8
    assert probe(tmp_path, ["--model.variant", "phi1_a1.3_b1.05_g1.2", *common], tmp_path)["input_shape"] == [
        2,
        3,
        272,
        272,
    ]
