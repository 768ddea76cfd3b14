"""`predict --onnx <export>/model.onnx`: an exported network run by onnxruntime on a folder, with
the class names and preprocessing of the export's `model.json`, writing the same predictions
as a checkpoint's predict.

    python cli.py predict --onnx runs/export/<run>-<checkpoint>/model.onnx --data.predict_root ~/unlabelled
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from effnet_lightning.export.runtime import onnx_probabilities, onnx_session, onnxruntime_installed


def read_export_info(onnx: str | Path) -> dict:
    """The `model.json` beside an exported ONNX file."""
    path = Path(onnx).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--onnx {path}: no such file (give the model.onnx that export wrote)")
    info_file = path.with_name("model.json")
    if not info_file.is_file():
        raise FileNotFoundError(
            f"--onnx {path}: no model.json beside it, so its classes and preprocessing are unknown: keep the "
            f"export's folder together"
        )
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--onnx {path}: {info_file} is not valid JSON ({e}): export the network again") from None
    listed = sorted(info.get("files", {}).values())
    if path.name not in listed:
        raise ValueError(
            f"--onnx {path}: {info_file} describes another export (its files: {', '.join(listed)}), so its "
            f"classes may not be this file's: export again with the formats you need"
        )
    return info


class OnnxPredictor(L.LightningModule):
    """predict_step through an onnxruntime session; outputs as `EfficientNetModule.predict_step`'s."""

    def __init__(self, onnx: str | Path, test_time_flip: bool = False):
        super().__init__()
        if not onnxruntime_installed():
            raise ValueError("--onnx needs onnxruntime: pip install onnxruntime")
        self.info = read_export_info(onnx)
        self.class_names = list(self.info["class_names"])
        # A multi-label export: a sigmoid per class, each called at its threshold (model.json's).
        self.multilabel = self.info.get("task") == "multilabel"
        self.thresholds = (
            torch.tensor([self.info["thresholds"][c] for c in self.class_names]) if self.multilabel else None
        )
        self.save_hyperparameters({"weights": str(onnx), "test_time_flip": test_time_flip})
        try:
            self.session = onnx_session(onnx)
        except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ValueError(f"--onnx {onnx} is not a readable ONNX file ({reason}): export it again") from None
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.class_names):
            raise ValueError(
                f"--onnx {onnx} has {outputs} outputs but its model.json names {len(self.class_names)} classes: "
                f"export the network again"
            )

    def on_predict_start(self) -> None:
        self.require_crop_size(self.trainer.datamodule.preprocessing.crop_size)

    def require_crop_size(self, size: int) -> None:
        """The data's evaluation crop must be the size the file takes."""
        expected = self.info["preprocessing"]["crop_size"]
        if size != expected:
            raise ValueError(
                f"the ONNX file takes {expected}-px images (its model.json) but the data module crops {size} px: "
                f"leave --data.image_size and --data.eval_image_size out"
            )

    def predict_step(self, batch, batch_idx):
        images, indices = batch
        probs = onnx_probabilities(self.session, images, self.hparams.test_time_flip, self.multilabel)
        if self.multilabel:
            return {"index": indices, "probs": probs, "labels": probs >= self.thresholds}
        return {"index": indices, "probs": probs}
