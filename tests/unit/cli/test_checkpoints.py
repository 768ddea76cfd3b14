"""What a subcommand runs and with which settings, as tables: the checkpoint chosen, and the
checkpoint's settings under what the user gave."""

import pytest

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
