"""The real command line, as a user runs it: `python cli.py ...` in a subprocess, on generated
images, writing real checkpoints and W&B offline files into a temporary folder."""

import csv
import json
import os
import re
import shlex

import pytest
import torch
import wandb_offline
import yaml
from cli_helpers import CSV, ROOT, TINY, printed_metric, run_cli

from effnet_lightning.cli.app import main
from effnet_lightning.data import demo
from effnet_lightning.training.module import EfficientNetModule


def probe(tmp_path, args, cwd):
    probe_file = tmp_path / "probe.json"
    run_cli(
        ["fit", *args, "--trainer.callbacks+=probes.TrainStartProbe"],
        cwd,
        env={**os.environ, "PROBE_FILE": str(probe_file)},
    )
    return json.loads(probe_file.read_text())


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
        ["fit", *args, "--trainer.max_epochs", "2", "--trainer.callbacks+=probes.RecordProbe"],
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
def test_test_without_ckpt_path_uses_the_best_checkpoint_of_the_latest_fit(tmp_path, small_root):
    args = ["--data.root", small_root, *TINY, *CSV]
    out = run_cli(["test", *args], tmp_path, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: nothing to test: no trained checkpoint recorded in runs/latest_fit.json; "
        "run `python cli.py fit` first or pass --ckpt_path"
    )
    run_cli(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"], tmp_path)
    run_cli(
        ["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"], tmp_path
    )  # again, same folder
    best = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["best_model_path"]
    out = run_cli(["test", *args], tmp_path)
    assert f"test: using the best checkpoint of the most recent fit: {best}" in out.stdout
    assert 0.0 <= printed_metric(out.stdout, "test/acc") <= 1.0


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


def print_config(args, capsys, monkeypatch, cwd) -> str:
    """`cli.py ... --print_config`, in-process (parsing only: no training)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args), "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_print_config_round_trips(tmp_path, capsys, monkeypatch):
    first = print_config(["fit", "--model.variant", "b2", "--data.batch_size", "12"], capsys, monkeypatch, tmp_path)
    (tmp_path / "config.yaml").write_text(first)
    assert print_config(["fit", "--config", "config.yaml"], capsys, monkeypatch, tmp_path) == first
    config = yaml.safe_load(first)
    assert config["model"]["variant"] == "b2" and config["data"]["batch_size"] == 12
    assert "preprocessing" not in config["data"]  # a link target: derived from the model, never typed
    assert config["trainer"]["logger"]["class_path"] == "effnet_lightning.cli.loggers.WandbLogger"


def test_shipped_configs_parse(tmp_path, capsys, monkeypatch, demo_root):
    defaults = yaml.safe_load(print_config(["fit"], capsys, monkeypatch, tmp_path))
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert {p.relative_to(ROOT / "configs").as_posix() for p in paths} >= {
        "finetune.yaml",
        "recipes/paper.yaml",
        "recipes/modern.yaml",
        "default.yaml",
        "progressive.yaml",
    }
    for path in paths:
        config = yaml.safe_load(print_config(["fit", "--config", path], capsys, monkeypatch, tmp_path))
        if path.stem.startswith("b"):
            assert config["model"]["variant"] == path.stem and config["data"]["image_size"] is None  # follows it
        if path.stem == "ddp":
            strategy = config["trainer"]["strategy"]
            assert strategy["class_path"].endswith("DDPStrategy") and config["trainer"]["sync_batchnorm"] is True
            assert strategy["init_args"]["timeout"] in ("0:10:00", 600, "10:00")
        if path.stem == "default":
            # the variant unset (b0 unless weights name another), the data the demo's
            assert config["model"]["variant"] is None and config["data"]["root"] is None
            assert config["data"]["image_size"] == 64 and config["data"]["crop_scale"] == [0.6, 1.0]
            assert config["trainer"]["logger"] == defaults["trainer"]["logger"]  # W&B, as without --config
        if path.stem == "scratch":  # without a root: the demo data, with the demo's image size
            assert config["data"]["root"] is None and config["data"]["image_size"] == 64
            assert config["data"]["crop_scale"] == [0.6, 1.0] and config["trainer"]["max_epochs"] == 30
        if path.stem == "finetune":
            assert config["model"]["weights"] == "imagenet" and config["model"]["freeze_backbone_epochs"] == 1
        if path.stem == "paper":
            assert config["model"]["optimizer"] == "rmsprop_tf" and config["ema"]["decay"] == 0.9999
            assert config["data"]["augment"] == "autoaugment" and config["model"]["lr_base_batch"] == 256
        if path.stem == "modern":
            assert config["model"]["optimizer"] == "sgd" and config["data"]["mixup_alpha"] == 0.2
        if path.stem == "progressive":
            assert config["stages"] == {"count": 4, "start": 0.5, "ramp": ["randaugment", "mixup", "cutmix", "dropout"]}


def test_fit_with_checkpointing_off_trains_and_writes_no_checkpoint(tmp_path, small_root):
    for switch in (["--trainer.enable_checkpointing", "false"], ["--checkpoint.enabled", "false"]):
        cwd = tmp_path / switch[0].strip("-")
        cwd.mkdir()
        args = ["fit", "--data.root", small_root, *TINY, *CSV, "--trainer.max_epochs", "1", *switch]
        out = run_cli([*args, "--trainer.limit_train_batches", "2"], cwd)
        assert "fit done: best val/acc" in out.stdout and "no checkpoint" in out.stdout
        assert not list(cwd.rglob("*.ckpt")) and list(cwd.rglob("metrics.csv"))


def test_scratch_config_is_the_demo_recipe_for_a_folder_of_ones_own(tmp_path, capsys, monkeypatch):
    scratch = yaml.safe_load(
        print_config(
            ["fit", "--config", ROOT / "configs" / "scratch.yaml", "--data.root", tmp_path],
            capsys,
            monkeypatch,
            tmp_path,
        )
    )
    # the user's images decide the size and the set's size the epochs; everything else is the demo's
    own = {("data", "image_size"), ("trainer", "max_epochs")}
    for section, values in demo.FIT_SETTINGS.items():
        for name, value in values.items():
            if (section, name) not in own:
                assert scratch[section][name] == value, f"configs/scratch.yaml {section}.{name}"
    assert scratch["data"]["image_size"] is None and scratch["model"]["weights"] is None
    assert scratch["model"]["variant"] is None and scratch["data"]["root"] == str(tmp_path)  # b0
    assert scratch["model"]["model_options"] is None  # residual blocks start as the identity


def test_the_from_scratch_commands_of_the_docs_parse(tmp_path, capsys, monkeypatch):
    page = (ROOT / "docs" / "from-scratch.md").read_text().splitlines()
    readme = [line for line in (ROOT / "README.md").read_text().splitlines() if "configs/scratch.yaml" in line]
    commands = [line for line in page + readme if line.startswith("python cli.py ")]
    assert len(commands) >= 3
    for command in commands:
        args = [arg.replace("~/my_images", str(tmp_path)) for arg in shlex.split(command, comments=True)[2:]]
        args = [
            str(tmp_path) if arg == "~/images" else str(ROOT / arg) if arg.startswith("configs/") else arg
            for arg in args
        ]
        config = yaml.safe_load(print_config(args, capsys, monkeypatch, tmp_path))
        assert config["data"]["root"] == str(tmp_path) and config["data"]["crop_scale"] == [0.6, 1.0]
        if "zero_init_residual" in command:
            assert config["model"]["model_options"] == {"zero_init_residual": False}


def test_bad_variant_is_a_clear_error(tmp_path):
    out = run_cli(["fit", "--model.variant", "b9"], tmp_path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown EfficientNet variant 'b9': choose one of b0, b1" in out.stderr.strip().splitlines()[-1]


def test_demo_settings_apply_only_to_the_demo_data_and_under_what_the_user_gives(tmp_path, capsys, monkeypatch):
    demo_fit = yaml.safe_load(print_config(["fit"], capsys, monkeypatch, tmp_path))
    assert demo_fit["data"]["image_size"] == 64 and demo_fit["trainer"]["max_epochs"] == 20
    assert demo_fit["model"]["lr"] == 0.002 and demo_fit["data"]["crop_scale"] == [0.6, 1.0]
    assert demo_fit["trainer"]["log_every_n_steps"] == 10  # 31 training batches an epoch
    # a chosen variant keeps its resolution on the demo data; flags win over the demo's settings
    b3 = yaml.safe_load(
        print_config(["fit", "--model.variant", "b3", "--model.lr", "0.01"], capsys, monkeypatch, tmp_path)
    )
    assert b3["data"]["image_size"] is None and b3["model"]["lr"] == 0.01 and b3["trainer"]["max_epochs"] == 20
    # the user's own data: none of the demo's settings
    own = ["fit", "--config", ROOT / "configs" / "b3.yaml", "--data.root", tmp_path]
    b3_own = yaml.safe_load(print_config(own, capsys, monkeypatch, tmp_path))
    plain = yaml.safe_load(print_config(["fit", "--data.root", tmp_path], capsys, monkeypatch, tmp_path))
    assert b3_own["data"]["image_size"] is None and b3_own["trainer"]["max_epochs"] == 100
    assert b3_own["model"]["lr"] == plain["model"]["lr"] == 0.001
    assert b3_own["data"]["crop_scale"] == plain["data"]["crop_scale"] == [0.08, 1.0]
    assert b3_own["trainer"]["log_every_n_steps"] is None and plain["trainer"]["log_every_n_steps"] is None  # 50
