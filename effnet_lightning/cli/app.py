"""The command line: LightningCLI over `EfficientNetModule` and `ImageFolderDataModule`.

    python cli.py fit                                  # b0 on the built-in demo data
    python cli.py fit --model.variant b3               # images follow the variant: 300 px
    python cli.py fit --ckpt_path last                 # resume the most recent fit
    python cli.py test                                 # best checkpoint of the most recent fit
    python cli.py fit --config configs/b3.yaml --data.root ~/my_images
    python cli.py fit --config configs/finetune.yaml --data.root ~/my_images --model.weights imagenet
    python cli.py predict --data.predict_root ~/new_images     # CSV + JSON of top-5 classes
    python cli.py predict --onnx export/model.onnx --data.predict_root ~/new_images   # with onnxruntime
    python cli.py export                                       # ONNX, TorchScript, safetensors
    python cli.py serve                                        # HTTP API and a page at http://127.0.0.1:8000
    python cli.py export --formats "[hub]" --push_to me/my-effnet   # timm's hub layout, uploaded
    python cli.py scale-search --config configs/default.yaml   # search alpha, beta, gamma (see search.py)
    python cli.py prepare --data.root ~/my_images --output_dir ~/my_shards   # then --data.root ~/my_shards

Links: the crop size and normalisation follow the model's variant and weights; the class
count and names follow the data, or the checkpoint when one is given.
"""

from __future__ import annotations

import os
import signal
import sys

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from effnet_lightning.callbacks.checkpoint import Checkpoint
from effnet_lightning.callbacks.distillation import Distillation
from effnet_lightning.callbacks.ema import EMA
from effnet_lightning.callbacks.evaluation_report import EvaluationReport
from effnet_lightning.callbacks.fit_summary import FitSummary
from effnet_lightning.callbacks.graceful_interrupt import GracefulInterrupt, received_signal
from effnet_lightning.callbacks.learning_rate_log import LearningRateLog
from effnet_lightning.callbacks.lr_finder import LRFinder
from effnet_lightning.callbacks.nonfinite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from effnet_lightning.callbacks.prediction_writer import PredictionWriter
from effnet_lightning.callbacks.process_watchdog import ProcessWatchdog
from effnet_lightning.callbacks.progressive import ProgressiveLearning
from effnet_lightning.callbacks.resumable_rng import ResumableRNG
from effnet_lightning.callbacks.run_config import RunConfig
from effnet_lightning.callbacks.run_record import read_run_record, run_record_path
from effnet_lightning.callbacks.wandb_run import WandbRunInCheckpoint
from effnet_lightning.callbacks.wandb_validation_report import WandbValidationReport
from effnet_lightning.cli.arguments import refuse_automatic_optimizers, silence_known_warnings, with_demo_settings
from effnet_lightning.cli.checkpoints import (
    EVAL_SUBCOMMANDS,
    SavedSettings,
    checkpoint_data_settings,
    choose_what_to_run,
    continue_distillation,
    continue_in_checkpoint_folder,
    continue_wandb_run,
    data_settings_line,
    given_data_settings,
    given_model_settings,
    given_settings,
    merge_checkpoint_settings,
    pretrained_class_names,
    read_checkpoint_settings,
    recorded_teacher,
    uses_fit_data,
)
from effnet_lightning.cli.onnx_predict import read_export_info
from effnet_lightning.cli.slurm import requeue_job
from effnet_lightning.cli.trainer import EffNetTrainer
from effnet_lightning.compat import CLIHooks
from effnet_lightning.console import log_to_stderr, one_line, say
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.models.factory import preprocessing_for
from effnet_lightning.training.module import EfficientNetModule

RUNS_DIR = "runs"
WANDB_LOGGER = "effnet_lightning.cli.loggers.WandbLogger"


def _data_preprocessing(variant: str | None, weights: str | None, preprocessing: dict | None) -> dict | None:
    if preprocessing:
        return preprocessing
    try:
        return preprocessing_for(variant, weights).to_dict()
    except ValueError:
        return None  # the model refuses the variant or weights with the whole message, not wrapped in the link's


class EffNetCLI(CLIHooks, LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
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
        parser.add_lightning_class_args(LearningRateLog, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.add_lightning_class_args(WandbValidationReport, "wandb_report")
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(ProgressiveLearning, "stages")
        parser.add_lightning_class_args(LRFinder, "lr_find")
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(GracefulInterrupt, "interrupt")
        parser.add_lightning_class_args(ResumableRNG, "rng_state")
        parser.add_lightning_class_args(WandbRunInCheckpoint, "wandb_run")
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "nonfinite")
        parser.add_lightning_class_args(ProcessWatchdog, "watchdog")
        parser.add_lightning_class_args(Distillation, "distill")
        parser.link_arguments(
            ("model.variant", "model.weights", "model.preprocessing"),
            "data.preprocessing",
            compute_fn=_data_preprocessing,
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        # Logs and checkpoints follow --trainer.default_root_dir unless the logger names its own folder.
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        root, logger = config.trainer.default_root_dir, config.trainer.get("logger")
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if root and init_args is not None and init_args.get("save_dir") == RUNS_DIR:
            # Neither folder given: a W&B run goes where WANDB_DIR says, else into runs/ (the logger decides).
            wandb_default = logger.get("class_path") == WANDB_LOGGER and root == RUNS_DIR
            init_args.save_dir = None if wandb_default else root

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Every always-on callback has one switch, `--<name>.enabled false`: switched off, it is
        # not on the trainer at all.
        trainer.callbacks = [c for c in trainer.callbacks if getattr(c, "enabled", True) is not False]
        if getattr(self.datamodule, "multilabel", False):
            self._monitor_map(trainer)
        return trainer

    def _monitor_map(self, trainer: Trainer) -> None:
        """A multi-label fit keeps the checkpoints of the best `val/map` (and names them by it),
        unless the user chose a monitor."""
        if "checkpoint.monitor" in self.given:
            return
        for callback in trainer.callbacks:
            if isinstance(callback, Checkpoint) and callback.monitor == "val/acc":
                callback.monitor = "val/map"
                if "checkpoint.filename" not in self.given:
                    callback.filename = "best-epoch{epoch:02d}-map{val/map:.4f}"

    def trainer_callbacks(self, config: dict, callbacks: list) -> list:
        """The Trainer refuses a ModelCheckpoint under enable_checkpointing=False, so the one made
        from class arguments is left out: what the user typed wins over the project's default."""
        if config.get("enable_checkpointing") is False:
            return [c for c in callbacks if not isinstance(c, Checkpoint)]
        return callbacks

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}, "serve": {"model", "datamodule"}}

    @staticmethod
    def set_subcommand_defaults(parser, subcommand: str) -> None:
        if subcommand == "predict":
            parser.set_defaults(return_predictions=False)  # the writer keeps what it needs
        if subcommand in ("fit", "validate", "test", "predict"):
            parser.set_defaults(weights_only=True)  # a checkpoint never runs pickled code

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        self.typed_model_settings, self.given_model_settings = given_model_settings(argv)
        self.given_data_settings = given_data_settings(argv)
        self.given = given_settings(argv)[1]

    def settle_config(self) -> None:
        """Choose what the subcommand runs (`choose_what_to_run`), then take the model's
        settings and classes from the checkpoint, under the settings the user gave."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if subcommand in ("predict", "serve") and config.get("onnx"):
            self._apply_export_settings(subcommand, config.onnx)
            return
        root = config.trainer.default_root_dir or RUNS_DIR
        record, record_path = read_run_record(root), str(run_record_path(root))
        if subcommand == "fit":
            config.distill.teacher = recorded_teacher(config.distill.teacher, record, record_path)
        choice = choose_what_to_run(
            subcommand,
            config.get("ckpt_path"),
            config.model.weights,
            weights_typed="weights" in self.typed_model_settings,
            record=record,
            record_path=record_path,
        )
        if choice.note:
            (rank_zero_warn if choice.warn else say)(choice.note)
        config.ckpt_path = choice.ckpt_path
        if choice.ckpt_path:
            saved = self._apply_checkpoint_settings(subcommand, choice.ckpt_path)
            if subcommand == "fit":  # (the config object was replaced by the checkpoint's settings)
                continue_in_checkpoint_folder(self.config[subcommand], choice.ckpt_path, saved.dirpath)
                continue_wandb_run(self.config[subcommand], saved.wandb_run)
                continue_distillation(self.config[subcommand], saved.distillation, self.given)
        elif subcommand in EVAL_SUBCOMMANDS and not config.data.class_names:
            config.data.class_names = pretrained_class_names(subcommand, config)
        self.config[subcommand].data.task = self.config[subcommand].model.task  # the targets follow the task

    def _apply_export_settings(self, subcommand: str, onnx: str) -> None:
        """predict / serve --onnx: the export's classes and preprocessing (its model.json) for the data;
        no checkpoint and no weights are read."""
        if self.config[subcommand].get("ckpt_path"):
            raise ValueError("give --onnx or --ckpt_path, not both")
        info = read_export_info(onnx)
        self.config[subcommand].data.class_names = list(info["class_names"])
        model = {
            "variant": info["variant"],
            "weights": None,
            "preprocessing": info["preprocessing"],
            "model_options": info["model_options"],
        }
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)  # links follow

    def _apply_checkpoint_settings(self, subcommand: str, ckpt_path: str) -> SavedSettings:
        """The checkpoint's model settings under the ones the user gave, and its classes; returns
        what else the checkpoint holds for a resumed run."""
        settings = read_checkpoint_settings(ckpt_path)
        saved = settings.hparams
        if saved.get("class_names"):
            # The data must have the checkpoint's classes (checked by the data module), and
            # predict / export label with them.
            self.config[subcommand].data.class_names = list(saved["class_names"])
        current = self.config[subcommand].model
        updates = merge_checkpoint_settings(
            saved, current.as_dict(), self.given_model_settings, self.typed_model_settings
        )
        updates["weights"] = None  # the checkpoint carries the trained weights
        self.config = self.parser.parse_object({subcommand: {"model": updates}}, self.config)
        if uses_fit_data(subcommand, self.config[subcommand].get("formats")):
            self._apply_checkpoint_data_settings(subcommand, settings.data_hparams)
        return settings

    def _apply_checkpoint_data_settings(self, subcommand: str, saved: dict) -> None:
        """The data settings of the checkpoint's fit (its folder, split and sizes) under the ones
        the user gave, said in one line."""
        current = self.config[subcommand].data.as_dict()
        taken = checkpoint_data_settings(saved, current, self.given_data_settings)
        if taken:
            say(data_settings_line(subcommand, taken))
            self.config = self.parser.parse_object({subcommand: {"data": taken}}, self.config)


SCALE_SEARCH_HELP = (
    "two more subcommands: scale-search  the compound-scaling search: alpha, beta, gamma trained through fit "
    "(python cli.py scale-search --help); prepare  an image folder into shards for --data.root "
    "(python cli.py prepare --help)"
)


def main(args: list[str] | None = None) -> EffNetCLI | None:
    """Run the CLI; `args` lets tests drive it in-process. Known errors print one line and
    exit with status 2, a NaN / Inf loss with 1, a fit stopped by a signal with 128 + its
    number after saving a checkpoint (EFFNET_DEBUG=1 shows the traceback)."""
    argv = list(sys.argv[1:] if args is None else args)
    log_to_stderr()
    try:
        if argv[:1] == ["scale-search"]:
            from effnet_lightning.tools import search

            return search.main(argv[1:])
        if argv[:1] == ["prepare"]:
            from effnet_lightning.tools import prepare

            return prepare.main(argv[1:])
        _, given = given_settings(argv)
        refuse_automatic_optimizers(given)
        argv = with_demo_settings(argv, given)
        silence_known_warnings(argv[0] if argv else None)
        return EffNetCLI(
            EfficientNetModule,
            ImageFolderDataModule,
            trainer_class=EffNetTrainer,
            trainer_defaults={
                "default_root_dir": RUNS_DIR,
                "max_epochs": 5,
                "logger": {
                    "class_path": "effnet_lightning.cli.loggers.WandbLogger",
                    "init_args": {"save_dir": RUNS_DIR},
                },
            },
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # the module's optimizer keeps its parameter groups and warm-up
            parser_kwargs={"epilog": SCALE_SEARCH_HELP},
            seed_everything_default=42,
            args=argv,
        )
    except SIGTERMException:  # the checkpoint callback has saved and said where
        if received_signal() == signal.SIGUSR1:
            requeue_job()
        sys.exit(128 + (received_signal() or signal.SIGTERM))
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError) as e:
        if os.environ.get("EFFNET_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1 if isinstance(e, NonFiniteLossError) else 2)
