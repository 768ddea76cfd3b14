"""What a subcommand runs and with which settings: the rules as tables, then the real CLI."""

import json

import pytest
import yaml
from cli_helpers import CSV, ROOT, TINY, last_error_line, printed_metric, run_cli

from effnet_lightning.cli.app import main
from effnet_lightning.cli.checkpoints import Choice, choose_what_to_run, given_model_settings, merge_checkpoint_settings

RECORD = {"best_model_path": "runs/a/checkpoints/best.ckpt", "last_model_path": "runs/a/checkpoints/last.ckpt"}
ON_DISK = {"runs/a/checkpoints/best.ckpt", "runs/a/checkpoints/last.ckpt", "mine.ckpt"}
BEST_NOTE = "{}: using the best checkpoint of the most recent fit: runs/a/checkpoints/best.ckpt"

# (subcommand, --ckpt_path, --model.weights, weights typed?, record) -> (checkpoint run, weights run)
CASES = [
    # typed weights win over a recorded fit: `predict --model.weights imagenet` after any fit
    ("predict", None, "imagenet", True, RECORD, (None, "imagenet")),
    (
        "test",
        None,
        "hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k",
        True,
        RECORD,
        (None, "hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k"),
    ),
    # a config's weights were the fit's starting point: the fit's best checkpoint is evaluated
    ("test", None, "imagenet", False, RECORD, ("runs/a/checkpoints/best.ckpt", None)),
    # nothing given: the latest fit's best checkpoint, for every evaluation subcommand
    ("test", None, None, False, RECORD, ("runs/a/checkpoints/best.ckpt", None)),
    ("predict", None, None, False, RECORD, ("runs/a/checkpoints/best.ckpt", None)),
    ("export", None, None, False, RECORD, ("runs/a/checkpoints/best.ckpt", None)),
    ("validate", None, None, False, RECORD, ("runs/a/checkpoints/best.ckpt", None)),
    # --ckpt_path X: X, whatever else is given
    ("test", "mine.ckpt", "imagenet", True, RECORD, ("mine.ckpt", None)),
    ("fit", "mine.ckpt", None, False, None, ("mine.ckpt", None)),
    ("predict", "last", None, False, RECORD, ("runs/a/checkpoints/last.ckpt", None)),
    ("fit", "last", None, False, RECORD, ("runs/a/checkpoints/last.ckpt", None)),
    # fit starts from the weights; no fit recorded: a config's weights are used
    ("fit", None, "imagenet", False, RECORD, (None, "imagenet")),
    ("test", None, "imagenet", False, None, (None, "imagenet")),
    ("fit", "last", "imagenet", False, None, (None, "imagenet")),  # nothing to resume: fresh, with a warning
]


@pytest.mark.parametrize(("subcommand", "ckpt_path", "weights", "typed", "record", "expected"), CASES)
def test_choose_what_to_run(subcommand, ckpt_path, weights, typed, record, expected):
    choice = choose_what_to_run(
        subcommand, ckpt_path, weights, typed, record, "runs/latest_fit.json", ON_DISK.__contains__
    )
    assert (choice.ckpt_path, choice.weights) == expected


def test_choose_what_to_run_says_which_and_refuses_what_it_cannot_run():
    exists = ON_DISK.__contains__
    choice = choose_what_to_run("test", None, None, False, RECORD, "runs/latest_fit.json", exists)
    assert choice == Choice("runs/a/checkpoints/best.ckpt", None, BEST_NOTE.format("test"))
    assert choose_what_to_run("fit", "last", None, False, None, "r.json", exists).warn
    with pytest.raises(FileNotFoundError, match="nothing to predict: no trained checkpoint recorded in r.json"):
        choose_what_to_run("predict", None, None, False, None, "r.json", exists)
    with pytest.raises(FileNotFoundError, match="--ckpt_path nope.ckpt: no such checkpoint file"):
        choose_what_to_run("test", "nope.ckpt", None, False, RECORD, "r.json", exists)
    gone = {**RECORD, "last_model_path": "runs/a/checkpoints/gone.ckpt"}
    with pytest.raises(FileNotFoundError, match="the recorded checkpoint runs/a/checkpoints/gone.ckpt is missing"):
        choose_what_to_run("fit", "last", None, False, gone, "r.json", exists)
    with pytest.raises(FileNotFoundError, match="--ckpt_path best: no checkpoint recorded"):
        choose_what_to_run("test", "best", None, False, None, "r.json", exists)


SAVED = {"variant": "lite0", "lr": 0.001, "compile": False, "model_options": {"padding": "same"}, "weights": "imagenet"}
CURRENT = {
    "variant": "b0",
    "lr": 0.001,
    "compile": False,
    "model_options": None,
    "weights": None,
    "test_time_flip": False,
}


def test_checkpoint_settings_are_defaults_under_what_the_user_gave():
    # nothing given: the checkpoint's network and settings
    assert merge_checkpoint_settings(SAVED, CURRENT, set(), set()) == {
        "variant": "lite0",
        "model_options": {"padding": "same"},
    }
    # typed flags win (compile, lr); the weights and per-run settings never come from the checkpoint
    current = {**CURRENT, "variant": "lite0", "compile": True, "lr": 0.5}
    assert merge_checkpoint_settings(SAVED, current, {"compile", "lr"}, {"compile", "lr"}) == {
        "model_options": {"padding": "same"}
    }
    # a config file's lr wins; its variant describes the fit and yields to the checkpoint's
    assert merge_checkpoint_settings({**SAVED, "lr": 0.3}, CURRENT, {"variant", "lr"}, set()) == {
        "variant": "lite0",
        "model_options": {"padding": "same"},
    }
    # a typed flag that contradicts the trained network is an error
    with pytest.raises(ValueError, match="--model.variant b0 contradicts the checkpoint's variant lite0"):
        merge_checkpoint_settings(SAVED, CURRENT, {"variant"}, {"variant"})
    with pytest.raises(ValueError, match="--model.model_options .* contradicts the checkpoint's model_options"):
        merge_checkpoint_settings(
            SAVED, {**CURRENT, "model_options": {"padding": "symmetric"}}, {"model_options"}, {"model_options"}
        )
    # typed and equal: no error
    assert merge_checkpoint_settings(SAVED, {**CURRENT, "variant": "lite0"}, {"variant"}, {"variant"}) == {
        "model_options": {"padding": "same"}
    }


def test_given_model_settings_reads_flags_and_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  lr: 0.1\n  variant: b3\ndata:\n  batch_size: 4\n")
    typed, given = given_model_settings(
        ["test", "--config", str(tmp_path / "a.yaml"), "--model.compile", "true", "--model.lr=0.5", "--data.root", "x"]
    )
    assert typed == {"compile", "lr"} and given == {"compile", "lr", "variant"}


@pytest.fixture(scope="module")
def finetuned(small_root, tmp_path_factory):
    """A short fine-tune of the packaged ImageNet Lite0 with configs/finetune.yaml."""
    cwd = tmp_path_factory.mktemp("finetuned")
    args = ["--config", ROOT / "configs" / "finetune.yaml", "--data.root", small_root, *TINY, *CSV]
    run_cli(
        ["fit", *args, "--model.variant", "lite0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"],
        cwd,
    )
    record = json.loads((cwd / "runs" / "latest_fit.json").read_text())
    return cwd, args, record


@pytest.mark.slow
def test_a_fine_tune_is_tested_with_its_config_and_each_run_keeps_its_config(finetuned, tmp_path):
    cwd, args, record = finetuned
    folder = cwd / record["checkpoint_dir"]
    fit_config = yaml.safe_load((folder / "config.yaml").read_text())
    assert fit_config["model"]["variant"] == "lite0" and fit_config["model"]["weights"] == "imagenet"
    fit_text = (folder / "config.yaml").read_text()
    # the config's `weights: imagenet` (and `variant: b0`) describe the fit: its best checkpoint is tested
    out = run_cli(["test", *args], cwd)
    best = record["best_model_path"]
    assert f"test: using the best checkpoint of the most recent fit: {best}" in out.stdout
    assert 0.0 <= printed_metric(out.stdout, "test/acc") <= 1.0
    test_config = yaml.safe_load((cwd / best.replace(".ckpt", ".test-config.yaml")).read_text())
    assert test_config["model"]["variant"] == "lite0" and test_config["ckpt_path"] == best
    assert (folder / "config.yaml").read_text() == fit_text and not (cwd / "runs" / "config.yaml").exists()
    # predict writes its config beside its predictions; the fit's stays
    run_cli(["predict", "--data.predict_root", args[3], *TINY, *CSV, "--predictions.output_dir", tmp_path], cwd)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["ckpt_path"] == best
    assert (folder / "config.yaml").read_text() == fit_text
    # ... also when its output folder is the fit's checkpoint folder, and so does export
    run_cli(["predict", "--data.predict_root", args[3], *TINY, *CSV, "--predictions.output_dir", folder], cwd)
    run_cli(["export", "--formats", "[safetensors]", "--output_dir", folder], cwd)
    assert (folder / "config.yaml").read_text() == fit_text
    for subcommand in ("predict", "export"):
        assert yaml.safe_load((folder / f"{subcommand}-config.yaml").read_text())["ckpt_path"] == best, subcommand


@pytest.mark.slow
def test_typed_flags_win_over_the_checkpoint_and_contradicting_the_network_is_an_error(finetuned):
    cwd, args, record = finetuned
    best = record["best_model_path"]
    common = ["--data.root", args[3], *TINY, *CSV, "--trainer.limit_val_batches", "1", "--ckpt_path", best]
    run_cli(["validate", *common, "--model.lr", "0.5", "--model.channels_last", "false"], cwd)
    config = yaml.safe_load((cwd / best.replace(".ckpt", ".val-config.yaml")).read_text())["model"]
    assert config["lr"] == 0.5 and config["channels_last"] is False  # typed: over the checkpoint's
    assert config["variant"] == "lite0" and config["model_options"]["padding"] == "same"  # from the checkpoint
    line = last_error_line(run_cli(["validate", *common, "--model.variant", "b0"], cwd, check=False))
    assert line == (
        "error: --model.variant b0 contradicts the checkpoint's variant lite0: it defines the trained network; drop "
        "the flag, or fine-tune with --model.weights CKPT instead"
    )


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ("fit", "validate", "test", "predict", "export", "scale-search"))


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
