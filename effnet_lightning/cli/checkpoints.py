"""Checkpoints: the checkpoint callback, the record of the latest fit that `--ckpt_path last`
and the evaluation subcommands read, the rule that picks what a subcommand runs, and how a
checkpoint's settings meet the ones the user gave."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from effnet_lightning.cli.console import say
from effnet_lightning.cli.guards import write_atomically
from effnet_lightning.cli.loggers import saved_wandb_run
from effnet_lightning.compat import save_last_checkpoint, saved_at_this_step
from effnet_lightning.models.state_dicts import WeightsError, read_checkpoint

RUN_RECORD = "latest_fit.json"


def run_record_path(root_dir: str | os.PathLike) -> Path:
    return Path(root_dir) / RUN_RECORD


def read_run_record(root_dir: str | os.PathLike) -> dict | None:
    path = run_record_path(root_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ModelCheckpoint has no public way to save `last` on demand or to hook each save; the private
# _save_last_checkpoint, _monitor_candidates, _save_checkpoint and _should_skip_saving_checkpoint
# are its own machinery for exactly that, used here as Lightning uses them.
class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` follows every epoch (Lightning
    writes it only together with a new top-k checkpoint, so after an epoch that did not
    improve the monitored metric, "last" would be an older state and a resume would lose work),
    that a fit stopped by SIGTERM or Ctrl+C writes `last.ckpt` where it stopped, and that every
    save updates <default_root_dir>/latest_fit.json. `enabled=False` (`--checkpoint.enabled
    false`) writes no checkpoints."""

    def __init__(self, *args, enabled: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled = enabled

    def on_exception(self, trainer, pl_module, exception):
        # Lightning stops for a signal at a batch boundary (a consistent state, agreed by all
        # processes); any other error may leave broken weights, which must not replace `last`.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING or not self.save_last:
            return
        save_last_checkpoint(self, trainer)
        say(
            f"fit stopped by a signal at step {trainer.global_step} (epoch {trainer.current_epoch}): saved "
            f"{self.last_model_path}; resume with `python cli.py fit ... --ckpt_path last`"
        )

    # A private override (listed in effnet_lightning/compat.py): every checkpoint file is written here.
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.state.fn == TrainerFn.FITTING:
            record_fit(trainer, finished=False)  # a resume finds every checkpoint as soon as it exists

    def load_state_dict(self, state_dict: dict) -> None:
        # The same folder, written relative or absolute, is the same folder: keep the best
        # checkpoints known (Lightning compares the strings).
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) == os.path.realpath(self.dirpath):

            def here(path):  # the saved paths, spelt the way this run spells its folder
                return os.path.join(self.dirpath, os.path.basename(path)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": here(state_dict.get("best_model_path")),
                "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                "last_model_path": here(state_dict.get("last_model_path")),
                "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)
        self._forget_missing_checkpoints()

    def _forget_missing_checkpoints(self) -> None:
        """Best checkpoints deleted since they were saved are no longer candidates."""
        kept = {path: score for path, score in self.best_k_models.items() if os.path.isfile(path)}
        if kept == self.best_k_models:
            return
        self.best_k_models = kept
        better, worse = (max, min) if self.mode == "max" else (min, max)
        if kept:
            self.best_model_path = better(kept, key=kept.get)
            self.best_model_score = kept[self.best_model_path]
            self.kth_best_model_path = worse(kept, key=kept.get)
            self.kth_value = kept[self.kth_best_model_path]
        else:
            self.best_model_path, self.best_model_score, self.kth_best_model_path = "", None, ""
            self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

    def on_train_epoch_end(self, trainer, pl_module):
        # After the epoch's validation and top-k choice (saving earlier would make Lightning skip
        # the top-k checkpoint of this step). Lightning writes "last" with every save, so nothing
        # saved at this step (its skip check) means "last" is out of date.
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not saved_at_this_step(self, trainer):
            save_last_checkpoint(self, trainer)


def record_fit(trainer, finished: bool) -> dict:
    """Write <default_root_dir>/latest_fit.json (rank 0): the run's checkpoint folder, best and
    last checkpoints. `--ckpt_path last|best` and test / predict / export read it."""
    ckpt = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    score = ckpt.best_model_score if ckpt else None
    record = {
        "finished": finished,
        "checkpoint_dir": str(ckpt.dirpath) if ckpt and ckpt.dirpath else None,
        "best_model_path": ckpt.best_model_path if ckpt else "",
        "best_score": float(score) if score is not None else None,
        "last_model_path": ckpt.last_model_path if ckpt else "",
    }
    if trainer.is_global_zero:
        text = json.dumps(record, indent=2) + "\n"
        write_atomically(run_record_path(trainer.default_root_dir), lambda f: f.write(text))
    return record


# Subcommands that run a trained model: without --ckpt_path, the latest fit's best checkpoint.
EVAL_SUBCOMMANDS = ("validate", "test", "predict", "export")


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
    - validate / test / predict / export: weights typed on the command line (`--model.weights
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
    hint = " (or --model.weights imagenet for ImageNet's classes)" if subcommand in ("predict", "export") else ""
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
            if isinstance(values, dict) and section in ("model", "data", "trainer"):
                given |= {f"{section}.{k}" for k in values.get("init_args", values)}
            else:
                given.add(section)
    return typed, given


def given_model_settings(argv: list[str]) -> tuple[set[str], set[str]]:
    """The `model.*` settings the user gave: (typed as flags, typed or set in --config files)."""
    typed, given = given_settings(argv)
    return _model_keys(typed), _model_keys(given)


def _model_keys(keys: set[str]) -> set[str]:
    return {k.removeprefix("model.") for k in keys if k.startswith("model.")}


@dataclass(frozen=True)
class SavedSettings:
    """What a resumed or evaluated run takes from its checkpoint, read in one go."""

    hparams: dict
    dirpath: str | None  # the folder its run checkpointed into (None if unknown)
    wandb_run: dict | None  # the W&B run it logged to ({"id", "project"}), None if none


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
    return SavedSettings(dict(checkpoint.get("hyper_parameters", {})), saved_dirpath, saved_wandb_run(checkpoint))
