"""The commands that follow a fit (test, validate) through the real CLI: which checkpoint they run
and with which settings."""

import json

import pytest
import yaml

from tests.helpers.cli import CSV, ROOT, TINY, last_error_line, printed_metric, run_cli


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
