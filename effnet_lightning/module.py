"""The LightningModule: an EfficientNet from `create_model`, its loss, metrics and optimizer.

Metrics are logged under `train/`, `val/`, `test/`: `loss`, `acc` (top-1) and `acc_top5`,
micro-averaged over samples.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from effnet_lightning.optim import Optimizer, Schedule, lr_lambda, make_optimizer, param_groups
from effnet_lightning.preprocessing import Preprocessing
from effnet_lightning.pretrained import create_model

STAGES = ("train", "val", "test")


class EfficientNetModule(L.LightningModule):
    """Train, validate and test an EfficientNet.

    Args:
        variant: b0-b7, lite0-lite4 or phi<x>.
        num_classes: set from the data by the CLI; nobody types it.
        weights: None (from scratch), "imagenet", or a weights file (see `create_model`).
        class_names: set from the data by the CLI; saved in checkpoints.
        optimizer: "sgd" (Nesterov), "adamw" or "rmsprop_tf" (the paper's).
        lr: peak learning rate, reached after warm-up.
        weight_decay: on conv and linear weights only, never on BatchNorm or biases.
        momentum: for sgd and rmsprop_tf.
        schedule: "cosine", "step" (x decay_rate every decay_epochs, the paper's) or "constant".
        warmup_epochs: linear warm-up length (fractions allowed).
        label_smoothing: for the cross-entropy loss.
        drop_path_rate, dropout: stochastic depth at the last block; dropout before the
            classifier (None: the variant's).
        channels_last: run the network in NHWC memory format (faster on CPU and GPU).
        zero_init_head: start a classifier that the weights did not provide at zero. The
            paper's U(+-1/sqrt(classes)) is sized for 1000 classes; with few classes it gives
            large initial logits that stall training on small data sets.
        model_options: further `EfficientNet` options (padding, bn_eps, in_channels, ...).
        preprocessing: the input the network expects (resize, crop, mean/std); None: what the
            weights need. Set from checkpoints, so a trained model keeps its preprocessing.
    """

    def __init__(
        self,
        variant: str = "b0",
        num_classes: int = 1000,
        weights: str | None = None,
        class_names: list[str] | None = None,
        optimizer: Optimizer = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        schedule: Schedule = "cosine",
        warmup_epochs: float = 1.0,
        decay_rate: float = 0.97,
        decay_epochs: float = 2.4,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        drop_path_rate: float = 0.2,
        dropout: float | None = None,
        channels_last: bool = True,
        zero_init_head: bool = True,
        model_options: dict | None = None,
        preprocessing: dict | None = None,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters()
        self.model = create_model(
            variant, num_classes=num_classes, weights=weights, drop_path_rate=drop_path_rate, dropout=dropout,
            **(model_options or {}),
        )  # fmt: skip
        if zero_init_head and num_classes and not self.model.head_loaded:
            nn.init.zeros_(self.model.classifier.weight)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if preprocessing:
            self.model.preprocessing = Preprocessing(**preprocessing)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # Plain types, so the checkpoint loads with torch.load(weights_only=True).
        self.hparams["preprocessing"] = self.model.preprocessing.to_dict()
        self.metrics = nn.ModuleDict({f"{stage}_metrics": self._make_metrics(num_classes, stage) for stage in STAGES})
        self.val_confusion = MulticlassConfusionMatrix(num_classes)

    @staticmethod
    def _make_metrics(num_classes: int, stage: str) -> MetricCollection:
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            },
            prefix=f"{stage}/",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def model_step(self, batch, stage: str) -> dict:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(targets),
                 sync_dist=stage != "train")  # fmt: skip
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(targets))
        return {"loss": loss, "preds": logits.argmax(1)}

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        out = self.model_step(batch, "val")
        self.val_confusion.update(out["preds"], batch[1])
        return out

    def test_step(self, batch, batch_idx):
        return self.model_step(batch, "test")

    def setup(self, stage: str) -> None:
        # The data may crop at another size (--data.image_size): checkpoints record what it used.
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "preprocessing"):
            self.model.preprocessing = datamodule.preprocessing
            self.hparams["preprocessing"] = datamodule.preprocessing.to_dict()

    def on_train_start(self) -> None:
        # Lightning logs the hyperparameters given at construction (after on_fit_start); add
        # the resolved input.
        for logger in self.loggers:
            logger.log_hyperparams({"preprocessing": self.hparams["preprocessing"]})

    def on_validation_epoch_end(self):
        # Callbacks (the W&B report) have read the matrix by now; start the next epoch clean.
        self.val_confusion.reset()

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = make_optimizer(hp.optimizer, param_groups(self.model, hp.weight_decay), hp.lr, hp.momentum)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        factor = lr_lambda(hp.schedule, total_steps, total_steps / epochs, hp.warmup_epochs, hp.decay_rate,
                           hp.decay_epochs, hp.min_lr_ratio)  # fmt: skip
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved and list(saved) != self.class_names:
            raise ValueError(
                f"the checkpoint was trained on classes {list(saved)[:5]}{'...' if len(saved) > 5 else ''} but the "
                f"data has {self.class_names[:5]}{'...' if len(self.class_names) > 5 else ''}: point --data.root at "
                f"a folder with the checkpoint's classes, or fine-tune with --model.weights CKPT instead"
            )
