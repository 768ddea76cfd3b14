"""What the command line does with the arguments before LightningCLI parses them: refusing
LightningCLI's automatic optimizers, the demo job's settings for a `fit` without data, and the
warnings that say nothing to a user of this project."""

from __future__ import annotations

import json
import warnings

from effnet_lightning.data import demo


def refuse_automatic_optimizers(given: set[str]) -> None:
    """`--optimizer` / `--lr_scheduler` (LightningCLI's automatic optimizers) would replace the
    module's optimizer, dropping its no-weight-decay groups and warm-up: refused in one line,
    as flags or as config file sections (`given`: the settings the user gave)."""
    for key in ("optimizer", "lr_scheduler"):
        if any(name == key or name.startswith(f"{key}.") for name in given):
            raise ValueError(
                f"--{key} is not supported: the optimizer is --model.optimizer (adamw, sgd or rmsprop_tf) with "
                f"--model.lr, --model.weight_decay, and the schedule --model.schedule (cosine, step, constant) with "
                f"--model.warmup_epochs"
            )


def with_demo_settings(argv: list[str], given: set[str]) -> list[str]:
    """`fit` without a data root or label file trains on the demo data with its own settings
    (`demo.FIT_SETTINGS`), given as the first config so that every flag and config file of the
    user's wins; the demo's image size only while the variant is not chosen."""
    if argv[:1] != ["fit"] or "data.root" in given or "data.label_file" in given:
        return argv
    settings = {section: dict(values) for section, values in demo.FIT_SETTINGS.items()}
    if "model.variant" in given:
        settings["data"].pop("image_size")
    return ["fit", "--config", json.dumps(settings), *argv[1:]]


def silence_known_warnings(subcommand: str | None) -> None:
    """Warnings that say nothing to a user of this project."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # The arguments are always handed over, so the demo settings can go in front of them.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended.*")
    if subcommand != "fit":
        # Evaluating a checkpoint from another run; the message is about the callback's own
        # state, which only a resumed fit uses.
        warnings.filterwarnings("ignore", message="The dirpath has changed from.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # torchdata's StatefulDataLoader (the training loader) calls a deprecated torch function.
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
