"""The commands that follow a fit (test, validate) through the real CLI: which checkpoint they run
and with which settings."""

import json
import shutil

import pytest
import yaml

from effnet_lightning.data import demo
from tests.helpers.cli import CSV, ROOT, TINY, last_error_line, printed_metric, run_cli
from tests.helpers.fault_doc import expect


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


# A folder of the user's: 3 classes of 8 images, split by the fit with --data.val_fraction 0.5
# (4 validation images per class; the default 0.2 would give 2).
OWN_CLASSES = ("ant", "bee", "wasp")
OWN_SPLIT = ["--data.val_fraction", "0.5", "--data.seed", "3"]


@pytest.fixture(scope="module")
def fitted_on_own_folder(demo_root, tmp_path_factory):
    """A short fit on `mine` (given relative to the run's folder), and its best checkpoint."""
    cwd = tmp_path_factory.mktemp("own")
    for name, source in zip(OWN_CLASSES, demo.CLASSES, strict=False):
        (cwd / "mine" / name).mkdir(parents=True)
        for src in sorted((demo_root / "train" / source).glob("*.png"))[:8]:
            shutil.copy(src, cwd / "mine" / name / src.name)
    args = ["--data.root", "mine", *OWN_SPLIT, *TINY, *CSV]
    run_cli(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"], cwd)
    best = json.loads((cwd / "runs" / "latest_fit.json").read_text())["best_model_path"]
    return cwd, best


def _used_data(cwd, best, suffix):
    return yaml.safe_load((cwd / best.replace(".ckpt", suffix)).read_text())["data"]


@pytest.mark.slow
def test_follow_up_commands_take_the_fits_data_settings_from_its_checkpoint(fitted_on_own_folder, tmp_path):
    cwd, best = fitted_on_own_folder
    own = cwd / "mine"
    runtime = ["--data.num_workers", "0", "--trainer.enable_progress_bar", "false", *CSV]
    taken = f"--data.root {own} --data.val_fraction 0.5 --data.seed 3 --data.image_size 64"
    # bare test and validate: on the fit's folder (made absolute), split as the fit split it
    for subcommand, suffix in (("test", ".test-config.yaml"), ("validate", ".val-config.yaml")):
        out = run_cli([subcommand, *runtime], cwd)
        assert f"{subcommand}: data settings from the checkpoint: {taken}" in out.stdout, out.stdout[-2000:]
        data = _used_data(cwd, best, suffix)
        assert (data["root"], data["val_fraction"], data["seed"], data["image_size"]) == (str(own), 0.5, 3, 64)
        assert data["batch_size"] == 32  # loader settings are this run's own
    assert 0.0 <= printed_metric(out.stdout, "val/acc") <= 1.0
    # export's INT8 check calibrates and measures on the fit's folder: its 12 validation images
    out = run_cli(
        ["export", "--formats", "[onnx, onnx_int8]", "--calibration_images", "8", "--output_dir", tmp_path], cwd
    )
    assert f"export: data settings from the checkpoint: {taken}" in out.stdout
    int8 = json.loads((tmp_path / "model.json").read_text())["int8"]
    assert int8["calibration_images"] == 8 and int8["images"] == 12


@pytest.mark.slow
def test_a_given_data_root_wins_and_a_moved_data_folder_is_named(fitted_on_own_folder, tmp_path):
    cwd, best = fitted_on_own_folder
    other = tmp_path / "other"
    shutil.copytree(cwd / "mine", other)
    out = run_cli(["validate", "--data.root", other, "--data.seed", "5", *TINY, *CSV], cwd)
    assert "validate: data settings from the checkpoint: --data.val_fraction 0.5\n" in out.stdout
    data = _used_data(cwd, best, ".val-config.yaml")
    assert (data["root"], data["val_fraction"], data["seed"]) == (str(other), 0.5, 5)
    (cwd / "mine").rename(cwd / "moved")
    try:
        line = last_error_line(run_cli(["test", *CSV], cwd, check=False))
        # an export that reads no data does not need the folder
        run_cli(["export", "--formats", "[safetensors]", "--output_dir", tmp_path / "export", *CSV], cwd)
    finally:
        (cwd / "moved").rename(cwd / "mine")
    assert line == (
        f"error: the data folder of the checkpoint's fit, {cwd / 'mine'}, no longer exists: give its new place "
        f"with --data.root DIR"
    )
    expect(
        "data-moved",
        "the data folder of the checkpoint's fit, <tmp>/mine, no longer exists: give its new place with --data.root DIR",
    )
