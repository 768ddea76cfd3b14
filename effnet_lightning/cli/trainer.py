"""The Trainer the CLI builds: checkpoints written atomically, SLURM requeue by this project,
`predict --onnx` through onnxruntime, and the `export` subcommand."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import CheckpointIO

from effnet_lightning.callbacks.atomic import AtomicCheckpointIO
from effnet_lightning.callbacks.evaluation_report import saved_reports
from effnet_lightning.callbacks.run_config import RunConfig
from effnet_lightning.cli.onnx_predict import OnnxPredictor
from effnet_lightning.cli.slurm import cluster_plugins
from effnet_lightning.export.folder import export_model
from effnet_lightning.export.formats import requested_formats
from effnet_lightning.export.hub import push_folder, require_token
from effnet_lightning.export.onnx_int8 import int8_check
from effnet_lightning.export.trained import load_trained, output_folder
from effnet_lightning.training.module import EfficientNetModule


class EffNetTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        # Checkpoints are written atomically unless another CheckpointIO is given.
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        kwargs["plugins"] = cluster_plugins(plugins)  # under SLURM: the project's requeue, not Lightning's
        super().__init__(*args, **kwargs)

    def predict(
        self,
        model=None,
        dataloaders=None,
        datamodule=None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        onnx: str | None = None,
    ):
        """Lightning's predict; with `onnx`, an exported model.onnx (its model.json beside it gives
        the classes and preprocessing) runs through onnxruntime instead of the network.

        Args:
            onnx: path of a model.onnx written by export.
        """
        if onnx:
            flip = bool(model is not None and model.hparams.test_time_flip)
            model, ckpt_path = OnnxPredictor(onnx, test_time_flip=flip), None
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def export(
        self,
        model: EfficientNetModule,
        datamodule=None,
        ckpt_path: str | None = None,
        output_dir: str | None = None,
        formats: list[str] | str | None = None,  # checked here: a wrong name is one line, not the usage
        tolerance: float = 1e-4,
        push_to: str | None = None,
        calibration_images: int = 200,
        int8_max_drop: float = 1.0,
    ) -> dict:
        """Export the network to ONNX, TorchScript and safetensors (and the hub folder on
        request), each checked against PyTorch.

        Args:
            ckpt_path: the checkpoint to export; None: --model.weights when typed, else the best
                checkpoint of the latest fit.
            output_dir: None: <default_root_dir>/export/<run>-<checkpoint name>. Files there are
                replaced only once the new export has passed its checks.
            formats: any of onnx, torchscript, safetensors, hub, onnx_int8 (default: the first
                three). onnx_int8: statically quantized ONNX (needs the data: the checkpoint's
                fit's, or --data.root). hub: a `hub/` folder in timm's Hugging Face layout (timm
                key names, config.json, model card with the checkpoint's evaluation reports).
            tolerance: largest allowed |logit difference| of a reloaded export.
            push_to: a Hugging Face repository (user/name) to upload the hub folder to, created
                private if missing; needs a token (HF_TOKEN or `hf auth login`). Adds hub to the
                formats.
            calibration_images: onnx_int8: training images (under the evaluation transform) that
                calibrate the activation ranges.
            int8_max_drop: onnx_int8: the largest allowed top-1 drop against fp32 on the validation
                images (all of them, at most 2,000), in points; a larger drop writes nothing.
        """
        formats = requested_formats(formats, push_to)
        if push_to:
            require_token(push_to)
        if not self.is_global_zero:  # under torchrun / srun: one process exports
            return {}
        load_trained(model, ckpt_path)
        out = output_folder(output_dir, self.default_root_dir, model, ckpt_path)
        int8 = int8_check(datamodule, calibration_images, int8_max_drop) if "onnx_int8" in formats else None
        info = export_model(
            model.model,
            out,
            class_names=model.class_names,
            formats=formats,
            tolerance=tolerance,
            source=ckpt_path or model.hparams.weights,
            evaluation=saved_reports(ckpt_path) if ckpt_path else {},
            hub_repo=push_to,
            int8=int8,
        )
        for callback in self.callbacks:
            if isinstance(callback, RunConfig):
                callback.write_into(out, "export")
        if push_to:
            print(f"export: pushed {out / 'hub'} to {push_folder(out / 'hub', push_to)}", flush=True)
        return info
