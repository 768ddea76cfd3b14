"""The command line's parser: subcommands, shipped configs, --print_config, and the docs' from-scratch
commands, parsed in-process."""

import shlex

import pytest
import yaml

from effnet_lightning.cli.app import main
from effnet_lightning.data import demo
from tests.helpers.cli import ROOT, print_config


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ("fit", "validate", "test", "predict", "export", "scale-search"))


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
