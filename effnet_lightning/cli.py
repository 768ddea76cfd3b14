"""The command line: LightningCLI over `EfficientNetModule` and `ImageFolderDataModule`.

    python cli.py fit                                  # b0 on the built-in demo data
    python cli.py fit --model.variant b3               # images follow the variant: 300 px
    python cli.py fit --ckpt_path last                 # resume the most recent fit
    python cli.py test                                 # best checkpoint of the most recent fit
    python cli.py fit --config configs/b3.yaml --data.root ~/my_images

Links: the crop size and normalisation follow the model's variant and weights; the class
count and names follow the data.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from effnet_lightning.callbacks import FitSummary, WandbValidationReport, read_run_record, run_record_path
from effnet_lightning.data import ImageFolderDataModule
from effnet_lightning.module import EfficientNetModule
from effnet_lightning.pretrained import preprocessing_for

RUNS_DIR = "runs"
# Set from the data or the weights when a checkpoint's hyperparameters are applied.
LINKED_MODEL_ARGS = ("num_classes", "class_names")


def _data_preprocessing(variant: str, weights: str | None, preprocessing: dict | None) -> dict:
    return preprocessing or preprocessing_for(variant, weights).to_dict()


class EffNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 2,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.add_lightning_class_args(WandbValidationReport, "wandb_report")
        parser.link_arguments(
            ("model.variant", "model.weights", "model.preprocessing"), "data.preprocessing",
            compute_fn=_data_preprocessing,
        )  # fmt: skip
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path last|best` (and test/validate without one) through the record of
        the most recent fit, then take the model's settings from the checkpoint."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        root = config.trainer.default_root_dir or RUNS_DIR
        ckpt_path = config.get("ckpt_path")
        record = read_run_record(root)
        if ckpt_path in ("last", "best"):
            key = f"{ckpt_path}_model_path"
            found = record.get(key) if record else None
            if found and os.path.isfile(found):
                ckpt_path = found
            elif subcommand == "fit" and ckpt_path == "last":
                rank_zero_warn(f"--ckpt_path last: no checkpoint recorded in {run_record_path(root)}; starting fresh")
                ckpt_path = None
            else:
                raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no checkpoint recorded in {run_record_path(root)}; "
                                        f"run `python cli.py fit` first or pass a checkpoint file")  # fmt: skip
        elif ckpt_path is None and subcommand in ("test", "validate"):
            best = record.get("best_model_path") if record else None
            if best and os.path.isfile(best):
                ckpt_path = best
                print(f"{subcommand}: using the best checkpoint of the most recent fit: {best}", flush=True)
            elif not config.model.weights:
                raise FileNotFoundError(f"nothing to {subcommand}: no trained checkpoint recorded in "
                                        f"{run_record_path(root)}; run `python cli.py fit` first or pass --ckpt_path")  # fmt: skip
        if ckpt_path is not None and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        config.ckpt_path = ckpt_path
        if ckpt_path:
            self._apply_checkpoint_hparams(subcommand, ckpt_path)

    def _apply_checkpoint_hparams(self, subcommand: str, ckpt_path: str) -> None:
        try:
            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as e:
            raise ValueError(f"--ckpt_path {ckpt_path} is not a readable checkpoint ({type(e).__name__}): "
                             f"pick another file, e.g. the run's last.ckpt") from None  # fmt: skip
        hparams = {
            k: v for k, v in checkpoint.get("hyper_parameters", {}).items()
            if k not in LINKED_MODEL_ARGS and not k.startswith("_")  # "_instantiator" is Lightning's
        }  # fmt: skip
        if not hparams:
            return
        hparams["weights"] = None  # the checkpoint carries the trained weights
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)


def main(args: list[str] | None = None) -> EffNetCLI | None:
    """Run the CLI; `args` lets tests drive it in-process. Known errors print one line and
    exit with status 2 (EFFNET_DEBUG=1 shows the traceback)."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        return EffNetCLI(
            EfficientNetModule,
            ImageFolderDataModule,
            trainer_defaults={
                "default_root_dir": RUNS_DIR,
                "max_epochs": 5,
                "logger": {"class_path": "effnet_lightning.loggers.WandbLogger", "init_args": {"save_dir": RUNS_DIR}},
            },
            save_config_kwargs={"overwrite": True},
            seed_everything_default=42,
            args=args,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("EFFNET_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
