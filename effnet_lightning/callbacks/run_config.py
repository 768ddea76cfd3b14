"""Each run's configuration, saved next to its checkpoints."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn

from effnet_lightning.callbacks.atomic import write_atomically
from effnet_lightning.callbacks.evaluation_report import evaluation_base
from effnet_lightning.callbacks.prediction_writer import PredictionWriter


class RunConfig(SaveConfigCallback):
    """Writes the full configuration of each run where that run leaves its results, so no run
    replaces another's: a fit's next to its checkpoints (`config.yaml`; a resumed fit in the
    same folder adds `config-2.yaml`, ...), validate / test beside their report
    (`<checkpoint>.<stage>-config.yaml`), predict in its output folder, export in the export
    folder (as `predict-config.yaml` / `export-config.yaml` in a fit's checkpoint folder)."""

    def __init__(self, parser, config, **kwargs):
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage) -> None:
        """Nothing at setup: the checkpoint folder and the checkpoint evaluated are known only
        once the run starts (the hooks below)."""

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and trainer.is_global_zero:
            self.write(Path(f"{evaluation_base(trainer)}.val-config.yaml"))

    def on_test_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write(Path(f"{evaluation_base(trainer)}.test-config.yaml"))

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            writer = next((c for c in trainer.callbacks if isinstance(c, PredictionWriter)), None)
            folder = writer.output_folder(trainer) if writer else Path(trainer.default_root_dir) / "predictions"
            self.write_into(folder, "predict")

    def on_fit_start(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if not trainer.is_global_zero or not isinstance(ckpt, ModelCheckpoint) or not ckpt.dirpath:
            return
        folder = Path(ckpt.dirpath)
        path, n = folder / "config.yaml", 1
        while path.exists():
            n += 1
            path = folder / f"config-{n}.yaml"
        self.write(path)

    def write_into(self, folder: Path, subcommand: str) -> None:
        """`folder/config.yaml`, or `<subcommand>-config.yaml` where `folder` is a fit's checkpoint
        folder that already has its fit's `config.yaml`."""
        path = folder / "config.yaml"
        if path.exists() and any(folder.glob("*.ckpt")):
            path = folder / f"{subcommand}-config.yaml"
        self.write(path)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.parser.dump(self.config, skip_none=False)
        write_atomically(path, lambda f: f.write(text))
