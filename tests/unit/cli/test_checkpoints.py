"""What a subcommand runs and with which settings, as tables: the checkpoint chosen, and the
checkpoint's settings under what the user gave."""

import pytest

from effnet_lightning.cli.checkpoints import (
    Choice,
    checkpoint_data_settings,
    choose_what_to_run,
    data_settings_line,
    given_data_settings,
    given_model_settings,
    merge_checkpoint_settings,
    uses_fit_data,
)

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


SAVED = {"variant": "lite0", "lr": 0.001, "compile": False, "model_options": {"padding": "same"}, "weights": "imagenet"}


CURRENT = {
    "variant": "b0",
    "lr": 0.001,
    "compile": False,
    "model_options": None,
    "weights": None,
    "test_time_flip": False,
}


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


# A fit's recorded data hyperparameters (its root made absolute).
SAVED_DATA = {
    "root": "/data/D",
    "image_size": 64,
    "eval_image_size": None,
    "extra_eval_sizes": None,
    "batch_size": 8,
    "num_workers": 0,
    "val_fraction": 0.25,
    "seed": 7,
    "augment": "randaugment",
    "mixup_alpha": 0.2,
    "allow_empty_classes": False,
    "strict": True,
}

FROM_FIT = {"root": "/data/D", "val_fraction": 0.25, "seed": 7, "image_size": 64}

# This run's data settings before the checkpoint's: the defaults.
CURRENT_DATA = {
    "root": None,
    "image_size": None,
    "eval_image_size": None,
    "extra_eval_sizes": None,
    "batch_size": 32,
    "num_workers": 2,
    "val_fraction": 0.2,
    "seed": 42,
    "augment": "none",
    "mixup_alpha": 0.0,
    "allow_empty_classes": False,
    "strict": False,
}


SIZES = ("image_size", "eval_image_size", "extra_eval_sizes")


# (recorded data hyperparameters, data settings the user gave) -> the settings taken from the checkpoint
DATA_CASES = [
    # nothing given: the folder, split and sizes where they differ from this run's; never the
    # loader, runtime or augmentation settings
    (SAVED_DATA, set(), FROM_FIT),
    (
        {**SAVED_DATA, "eval_image_size": 96, "allow_empty_classes": True},
        set(),
        {**FROM_FIT, "eval_image_size": 96, "allow_empty_classes": True},
    ),
    # given settings win, each on its own
    (SAVED_DATA, {"root"}, {k: v for k, v in FROM_FIT.items() if k != "root"}),
    (SAVED_DATA, {"seed"}, {k: v for k, v in FROM_FIT.items() if k != "seed"}),
    # the sizes go together: one given, none of the fit's (its extra sizes not added to the choice)
    (SAVED_DATA, {"eval_image_size"}, {k: v for k, v in FROM_FIT.items() if k not in SIZES}),
    # no root recorded (a fit on the demo data): the demo data stays the default
    ({**SAVED_DATA, "root": None}, set(), {}),
    ({}, set(), {}),
    # shards in an object store are not looked for on disk
    ({**SAVED_DATA, "root": "s3://bucket/shards"}, set(), {**FROM_FIT, "root": "s3://bucket/shards"}),
    # the recorded folder is gone, but the user gives another: no error
    ({**SAVED_DATA, "root": "/gone"}, {"root"}, {k: v for k, v in FROM_FIT.items() if k != "root"}),
]


@pytest.mark.parametrize(("saved", "given", "expected"), DATA_CASES)
def test_checkpoint_data_settings(saved, given, expected):
    assert checkpoint_data_settings(saved, CURRENT_DATA, given, {"/data/D"}.__contains__) == expected


def test_checkpoint_data_settings_refuse_a_moved_folder_and_say_what_they_take():
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_data_settings({**SAVED_DATA, "root": "/gone"}, CURRENT_DATA, set(), {"/data/D"}.__contains__)
    assert str(error.value) == (
        "the data folder of the checkpoint's fit, /gone, no longer exists: give its new place with --data.root DIR"
    )
    line = data_settings_line("test", {"root": "/data/D", "seed": 7, "extra_eval_sizes": [64, 96], "strict": False})
    assert line == (
        "test: data settings from the checkpoint: --data.root /data/D --data.seed 7 "
        "--data.extra_eval_sizes [64, 96] --data.strict false"
    )


def test_given_data_settings_reads_flags_and_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("data:\n  init_args:\n    seed: 3\nmodel:\n  lr: 0.1\n")
    given = given_data_settings(["test", "--config", str(tmp_path / "a.yaml"), "--data.root=x", "--model.lr", "1"])
    assert given == {"seed", "root"}


# (subcommand, export's --formats) -> whether it takes the data settings of the checkpoint's fit
USES_FIT_DATA = [
    ("validate", None, True),
    ("test", None, True),
    ("export", ["onnx", "onnx_int8"], True),  # the INT8 check calibrates and measures on the data
    ("export", "onnx_int8", True),
    ("export", None, False),  # the default formats need no data
    ("export", ["safetensors"], False),
    ("predict", None, False),  # predict reads --data.predict_root
    ("fit", None, False),
]


@pytest.mark.parametrize(("subcommand", "formats", "expected"), USES_FIT_DATA)
def test_uses_fit_data(subcommand, formats, expected):
    assert uses_fit_data(subcommand, formats) is expected


def test_a_resumed_fit_takes_the_checkpoints_teacher_unless_the_user_gives_one(capsys):
    from types import SimpleNamespace

    from effnet_lightning.cli.checkpoints import continue_distillation

    saved = {"teacher": "/t/best.ckpt", "teacher_variant": None, "teacher_digest": "ab", "alpha": 0.7}
    saved |= {"temperature": 2.0, "extra_root": "/u", "extra_share": 0.25}
    config = SimpleNamespace(distill={"teacher": None, "alpha": 0.5, "temperature": 1.0})
    continue_distillation(config, saved, given={"data.root"})
    assert config.distill == {
        "teacher": "/t/best.ckpt",
        "teacher_variant": None,
        "alpha": 0.7,
        "temperature": 2.0,
        "extra_root": "/u",
        "extra_share": 0.25,
    }
    assert "fit: distilling from the checkpoint's teacher /t/best.ckpt" in capsys.readouterr().out
    typed = SimpleNamespace(distill={"teacher": None, "alpha": 0.5, "temperature": 1.0})
    continue_distillation(typed, saved, given={"distill.alpha"})
    assert typed.distill["alpha"] == 0.5 and typed.distill["teacher"] == "/t/best.ckpt"
    untouched = SimpleNamespace(distill={"teacher": None})
    continue_distillation(untouched, saved, given={"distill"})  # a whole --config section of the user's
    continue_distillation(untouched, None, given=set())  # a fit without a teacher
    assert untouched.distill == {"teacher": None}
