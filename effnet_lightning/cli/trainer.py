"""The Trainer the CLI builds: checkpoints written atomically, SLURM requeue by this project,
`predict --onnx` through onnxruntime, and the `export` and `serve` subcommands."""

from __future__ import annotations

import multiprocessing as mp

from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CUDAAccelerator
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
from effnet_lightning.training.multilabel import logits_map


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
        score = logits_map if model.multilabel else None  # a multi-label model's INT8 check compares mAP
        int8 = int8_check(datamodule, calibration_images, int8_max_drop, score) if "onnx_int8" in formats else None
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
            thresholds=model.thresholds.tolist() if model.multilabel else None,
        )
        for callback in self.callbacks:
            if isinstance(callback, RunConfig):
                callback.write_into(out, "export")
        if push_to:
            print(f"export: pushed {out / 'hub'} to {push_folder(out / 'hub', push_to)}", flush=True)
        return info

    def serve(
        self,
        model: EfficientNetModule,
        datamodule=None,
        ckpt_path: str | None = None,
        onnx: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        workers_per_device: int = 1,
        max_upload_mb: float = 20.0,
        timeout: float = 30.0,
    ) -> None:
        """Serve the network over HTTP (LitServe) until SIGTERM or Ctrl+C: POST /predict with an
        image gives its top-k classes as JSON, GET / a page to try it, GET /health 200 once the
        model is loaded. The model is chosen as predict chooses it; preprocessing and classes
        come with it.

        Args:
            ckpt_path: the checkpoint to serve; None: --model.weights when typed, else the best
                checkpoint of the latest fit.
            onnx: serve an exported model.onnx (fp32 or INT8) through onnxruntime instead; its
                model.json gives the classes and preprocessing.
            host: 127.0.0.1 (this machine only), 0.0.0.0 or ::.
            port: the HTTP port.
            max_batch_size: requests that arrive together run as one batch of up to this many
                (1: each request alone).
            batch_timeout: seconds a batch waits to fill.
            workers_per_device: inference processes per device (on the CPU they share its cores).
            max_upload_mb: larger uploads are refused (413).
            timeout: seconds a request may wait for the model before it gets 504.
        """
        from effnet_lightning.serving.api import ClassifierAPI
        from effnet_lightning.serving.server import check_address, serve

        check_address(host, port)  # before anything loads
        if max_batch_size < 1 or batch_timeout < 0 or workers_per_device < 1:
            raise ValueError(
                "serve: --max_batch_size and --workers_per_device must be at least 1, --batch_timeout >= 0"
            )
        if onnx:
            predictor = OnnxPredictor(onnx)  # read here, so a bad file is one line before anything starts
            predictor.require_crop_size(datamodule.preprocessing.crop_size)
            source = {"onnx": str(onnx), "test_time_flip": model.hparams.test_time_flip}
            class_names = predictor.class_names  # the export's model.json
            thresholds = predictor.thresholds.tolist() if predictor.multilabel else None
        else:
            load_trained(model, ckpt_path)
            source, class_names = {"module": model}, model.class_names
            thresholds = model.thresholds.tolist() if model.multilabel else None
        on_gpu = isinstance(self.accelerator, CUDAAccelerator)
        api = ClassifierAPI(
            **source,
            preprocessing=datamodule.preprocessing,
            class_names=class_names,
            thresholds=thresholds,
            released=mp.get_context("spawn").Event(),
            workers_per_device=workers_per_device,
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
        )
        serve(
            api,
            host=host,
            port=port,
            accelerator="cuda" if on_gpu else "cpu",
            devices=self.num_devices if on_gpu else 1,
            workers_per_device=workers_per_device,
            max_upload_mb=max_upload_mb,
            timeout=timeout,
        )
