"""What a subcommand runs and with which settings: the rule that picks a checkpoint or weights,
how a checkpoint's settings meet the ones the user gave, and what a resumed fit continues (its
checkpoint folder, its W&B run)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from effnet_lightning.callbacks.distillation import saved_distillation
from effnet_lightning.callbacks.wandb_run import saved_wandb_run
from effnet_lightning.console import say
from effnet_lightning.data.shards import is_shard_url
from effnet_lightning.models.factory import checkpoint_hparams, pretrained_source
from effnet_lightning.models.state_dicts import WeightsError, read_checkpoint

# Subcommands that run a trained model: without --ckpt_path, the latest fit's best checkpoint.
EVAL_SUBCOMMANDS = ("validate", "test", "predict", "export", "serve")


@dataclass(frozen=True)
class Choice:
    """What a subcommand runs: a checkpoint file, or else the weights (None: a fresh network,
    which only fit may train). `note` is the line that tells the user which."""

    ckpt_path: str | None
    weights: str | None
    note: str | None = None
    warn: bool = False


def choose_what_to_run(
    subcommand: str,
    ckpt_path: str | None,
    weights: str | None,
    weights_typed: bool,
    record: dict | None,
    record_path: str,
    exists: Callable[[str], bool] = os.path.isfile,
) -> Choice:
    """Which network a subcommand runs, from what the user gave.

    - `--ckpt_path FILE` runs FILE; `--ckpt_path last|best` the latest fit's last / best
      checkpoint (from its record).
    - fit: the weights as a starting point (a hub name, "imagenet", a file or None).
    - validate / test / predict / export / serve: weights typed on the command line (`--model.weights
      imagenet`, a hub name, a file); else the latest fit's best checkpoint; else weights set in
      a config file. A config's weights are a fit's starting point, so a fit recorded after them
      is what the user means to evaluate.
    """
    if ckpt_path in ("last", "best"):
        found = (record or {}).get(f"{ckpt_path}_model_path")
        if found and exists(found):
            return Choice(found, None)
        if found:
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path}: the recorded checkpoint {found} is missing; pass "
                f"another checkpoint file (the run record is {record_path})"
            )
        if subcommand == "fit" and ckpt_path == "last":
            return Choice(
                None, weights, f"--ckpt_path last: no checkpoint recorded in {record_path}; starting fresh", warn=True
            )
        raise FileNotFoundError(
            f"--ckpt_path {ckpt_path}: no checkpoint recorded in {record_path}; run `python "
            f"cli.py fit` first or pass a checkpoint file"
        )
    if ckpt_path is not None:
        if not exists(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        return Choice(ckpt_path, None)
    if subcommand not in EVAL_SUBCOMMANDS:
        return Choice(None, weights)
    if weights and weights_typed:
        return Choice(None, weights, f"{subcommand}: running --model.weights {weights}")
    best = (record or {}).get("best_model_path")
    if best and exists(best):
        return Choice(best, None, f"{subcommand}: using the best checkpoint of the most recent fit: {best}")
    if weights:
        why = f"the recorded best checkpoint {best} is missing" if best else f"no fit recorded in {record_path}"
        return Choice(None, weights, f"{subcommand}: {why}; using --model.weights {weights}")
    hint = (
        " (or --model.weights imagenet for ImageNet's classes)" if subcommand in ("predict", "export", "serve") else ""
    )
    raise FileNotFoundError(
        f"nothing to {subcommand}: no trained checkpoint recorded in {record_path}; run `python "
        f"cli.py fit` first or pass --ckpt_path{hint}"
    )


# Settings that define the trained network: a checkpoint's value may not be contradicted.
NETWORK_SETTINGS = ("variant", "model_options")

# Set from the data and the checkpoint's own classes and weights, not from its hyperparameters.
LINKED_SETTINGS = ("num_classes", "class_names", "weights")

# Chosen per run, never taken from the checkpoint: how to evaluate.
PER_RUN_SETTINGS = ("test_time_flip",)


def merge_checkpoint_settings(saved: dict, current: dict, given: set[str], typed: set[str]) -> dict:
    """The module settings a run from a checkpoint uses: the checkpoint's are the defaults, the
    ones the user gave (`given`: typed flags and --config files) win, except those that define
    the trained network: a typed flag that contradicts the checkpoint is an error, a config
    file's value yields to the checkpoint (it describes the fit that made it). Returns the
    settings to apply over `current`."""
    updates = {}
    for key, value in saved.items():
        # ("_instantiator" and other underscored keys are Lightning's own)
        if key.startswith("_") or key in LINKED_SETTINGS + PER_RUN_SETTINGS or key not in current:
            continue
        if key in NETWORK_SETTINGS and key in typed and _differs(current[key], value):
            raise ValueError(
                f"--model.{key} {current[key]} contradicts the checkpoint's {key} {value}: it defines the "
                f"trained network; drop the flag, or fine-tune with --model.weights CKPT instead"
            )
        if key in given and key not in NETWORK_SETTINGS:
            continue
        if _differs(current[key], value):
            updates[key] = value
    return updates


def _differs(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return (a or {}) != (b or {})
    return a != b


def given_settings(argv: list[str]) -> tuple[set[str], set[str]]:
    """The settings the user gave, as `section.name`: (typed as flags, typed or set in --config
    files). Top-level settings are `name` alone."""
    typed, configs = set(), []
    for i, arg in enumerate(argv):
        name, _, inline = arg.partition("=")
        if name == "--config":
            path = inline or (argv[i + 1] if i + 1 < len(argv) else None)
            if path:
                configs.append(path)
        elif name.startswith("--"):
            typed.add(".".join(name[2:].split(".")[:2]))
    given = set(typed)
    for path in configs:
        try:
            content = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser reports an unreadable config
        for section, values in content.items() if isinstance(content, dict) else ():
            if isinstance(values, dict) and section in ("model", "data", "trainer", "distill"):
                given |= {f"{section}.{k}" for k in values.get("init_args", values)}
            else:
                given.add(section)
    return typed, given


def given_model_settings(argv: list[str]) -> tuple[set[str], set[str]]:
    """The `model.*` settings the user gave: (typed as flags, typed or set in --config files)."""
    typed, given = given_settings(argv)
    return _model_keys(typed), _model_keys(given)


def given_data_settings(argv: list[str]) -> set[str]:
    """The `data.*` settings the user gave, typed as flags or set in --config files."""
    _, given = given_settings(argv)
    return {k.removeprefix("data.") for k in given if k.startswith("data.")}


def _model_keys(keys: set[str]) -> set[str]:
    return {k.removeprefix("model.") for k in keys if k.startswith("model.")}


def uses_fit_data(subcommand: str, formats: list[str] | str | None = None) -> bool:
    """Whether a subcommand run from a checkpoint reads labelled data, so the data settings of
    the checkpoint's fit are its defaults: validate and test do, export only for its INT8 check
    (`formats`: export's)."""
    if subcommand == "export":
        return bool(formats) and "onnx_int8" in formats
    return subcommand in ("validate", "test")


# The data settings a checkpoint's fit recorded that define which images, split how and seen at
# which sizes: the root (absolute), the split, the image sizes and the classes' source. Loader
# and runtime settings (batch_size, num_workers, ...) and augmentation are chosen per run.
RECORDED_DATA_SETTINGS = (
    "root",
    "label_file",
    "val_fraction",
    "seed",
    "image_size",
    "eval_image_size",
    "extra_eval_sizes",
    "allow_empty_classes",
)
# The sizes go together: a user who gives one of them chooses the sizes of this run, and the
# fit's others (an extra evaluation size, say) are not added to that choice.
SIZE_SETTINGS = ("image_size", "eval_image_size", "extra_eval_sizes")
# Where the images are goes together too: a root typed alone means its class folders, not the
# fit's label file.
SOURCE_SETTINGS = ("root", "label_file")


def checkpoint_data_settings(
    saved: dict, current: dict, given: set[str], exists: Callable[[str], bool] = os.path.exists
) -> dict:
    """The data settings a run from a checkpoint takes from its fit (`saved`: the checkpoint's
    data hyperparameters): those in RECORDED_DATA_SETTINGS that the user did not give (`given`:
    typed flags and --config files, as names under `data.`; the sizes as one) and that differ
    from `current`. Nothing when the fit recorded no root and no label file (the demo data stays
    the default). A recorded folder or label file that no longer exists is an error."""
    root = saved.get("root")
    if not root and not saved.get("label_file"):
        return {}
    for group in (SIZE_SETTINGS, SOURCE_SETTINGS):
        if given & set(group):
            given = given | set(group)
    taken = {
        key: saved[key]
        for key in RECORDED_DATA_SETTINGS
        if key in saved and key not in given and _differs(current.get(key), saved[key])
    }
    if "root" in taken and not is_shard_url(root) and not exists(root):
        raise FileNotFoundError(
            f"the data folder of the checkpoint's fit, {root}, no longer exists: give its new place with "
            f"--data.root DIR"
        )
    if "label_file" in taken and not exists(taken["label_file"]):
        raise FileNotFoundError(
            f"the label file of the checkpoint's fit, {taken['label_file']}, no longer exists: give its new "
            f"place with --data.label_file FILE"
        )
    return taken


def data_settings_line(subcommand: str, taken: dict) -> str:
    """The line that says which data settings came from the checkpoint, as the flags they stand for."""
    flags = " ".join(f"--data.{key} {_flag_value(value)}" for key, value in taken.items())
    return f"{subcommand}: data settings from the checkpoint: {flags}"


def _flag_value(value) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class SavedSettings:
    """What a resumed or evaluated run takes from its checkpoint, read in one go."""

    hparams: dict
    data_hparams: dict  # the data module's, as its fit recorded them
    dirpath: str | None  # the folder its run checkpointed into (None if unknown)
    wandb_run: dict | None  # the W&B run it logged to ({"id", "project"}), None if none
    distillation: dict | None = None  # its fit's --distill settings and teacher digest, None if none


def read_checkpoint_settings(path: str) -> SavedSettings:
    """A checkpoint's hyperparameters, the folder its run checkpointed into and its W&B run."""
    try:
        checkpoint = read_checkpoint(path)
    except WeightsError as e:
        raise ValueError(f"--ckpt_path {e}") from None
    saved_dirpath = next(
        (
            state.get("dirpath")
            for key, state in checkpoint.get("callbacks", {}).items()
            if "Checkpoint" in key and isinstance(state, dict)
        ),
        None,
    )
    return SavedSettings(
        dict(checkpoint.get("hyper_parameters", {})),
        dict(checkpoint.get("datamodule_hyper_parameters", {})),
        saved_dirpath,
        saved_wandb_run(checkpoint),
        saved_distillation(checkpoint),
    )


def continue_in_checkpoint_folder(config, ckpt_path: str, saved_dirpath: str | None) -> None:
    """Resuming from a checkpoint in the folder its run checkpointed into: new checkpoints go
    to the same folder, so the best ones recorded there stay known (the logger starts a new
    version, so its old logs stay)."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(ckpt_path)))
    if config.checkpoint.get("dirpath") or not saved_dirpath or os.path.realpath(saved_dirpath) != folder:
        return
    config.checkpoint.dirpath = saved_dirpath


def continue_wandb_run(config, run: dict | None) -> None:
    """Resuming a fit that logged to W&B: into the same `run` (the checkpoint's), unless the
    logger is given another run id or project."""
    logger = config.trainer.get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    if init_args is None or not str(logger.get("class_path", "")).endswith("WandbLogger") or init_args.get("id"):
        return
    if run is None or init_args.get("project") not in (None, run.get("project")):
        return
    init_args.id = run["id"]
    say(f"W&B: resuming run {run['id']} of the checkpoint")


def recorded_teacher(spec: str | None, record: dict | None, record_path: str) -> str | None:
    """`--distill.teacher best|last`: the latest fit's best / last checkpoint, as a path (what the
    student's checkpoints record, so a resumed fit finds the same teacher after later fits)."""
    if spec not in ("best", "last"):
        return spec
    found = (record or {}).get(f"{spec}_model_path")
    if not found or not os.path.isfile(found):
        raise FileNotFoundError(
            f"--distill.teacher {spec}: no {spec} checkpoint of a fit recorded in {record_path}; fit the teacher "
            f"first, or give its checkpoint file"
        )
    return found


# The --distill settings a resumed fit takes from its checkpoint unless the user gives them.
DISTILL_SETTINGS = ("teacher", "teacher_variant", "alpha", "temperature", "extra_root", "extra_share")


def continue_distillation(config, saved: dict | None, given: set[str]) -> None:
    """Resuming a fit that distilled: the same teacher and settings (the teacher is checked
    against the digest the checkpoint recorded when it loads), except the ones the user gave
    (`given`: `distill.<name>` typed or in a --config file; a whole `distill` section in one)."""
    if saved is None or "distill" in given:
        return
    taken = {key: saved[key] for key in DISTILL_SETTINGS if key in saved and f"distill.{key}" not in given}
    for key, value in taken.items():
        config.distill[key] = value
    if "teacher" in taken:
        say(f"fit: distilling from the checkpoint's teacher {saved['teacher']}")


def pretrained_class_names(subcommand: str, config) -> list[str] | None:
    """The classes of weights used without --ckpt_path: a checkpoint's own (so the data
    folder is checked against them), the published weights' own (ImageNet's, a hub
    repository's label names) for predict / export / serve, else the data folder's (None)."""
    weights = config.model.weights
    names = (checkpoint_hparams(weights) or {}).get("class_names")
    if names:
        return list(names)
    if subcommand not in ("predict", "export", "serve") or not weights:
        return None
    try:
        source = pretrained_source(config.model.variant, weights)
    except ValueError:
        source = None  # the model refuses these weights, with the whole message
    if source is not None and source.categories:
        return list(source.categories)
    if config.data.root:
        return None  # the folder's class folders name the classes
    raise ValueError(
        f"{subcommand}: the class names of {weights} are unknown: pass --ckpt_path of a trained checkpoint, "
        f"--data.class_names [...], or --data.root with one folder per class"
    )
