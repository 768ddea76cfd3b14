"""The LightningModule: an EfficientNet from `create_model`, its loss, metrics and optimizer.

Metrics are logged under `train/`, `val/`, `test/`: `loss`, `acc` (top-1) and `acc_top5`,
micro-averaged over samples, at the data's evaluation size; `val/acc@<size>` and
`val/loss@<size>` at each of its extra evaluation sizes. `predict` returns class probabilities per image.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from effnet_lightning.models.compilation import CompiledOrEager
from effnet_lightning.models.factory import create_model
from effnet_lightning.models.inference import fold_batchnorm, in_chunks
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.training.optim import Optimizer, Schedule, lr_lambda, make_optimizer, param_groups, scale_lr

STAGES = ("train", "val", "test")


class EfficientNetModule(L.LightningModule):
    """Train, validate and test an EfficientNet.

    Args:
        variant: b0-b8, l2, lite0-lite4 or phi<x>. None: the one hub weights are for, else b0
            (checkpoints record the variant built).
        num_classes: set from the data by the CLI; nobody types it.
        weights: None (from scratch), "imagenet", a published set ("ns", "ap", ...),
            "hf-hub:<repo>[@revision]", or a weights file (see `create_model`).
        weights_only: read the weights file without running pickled code in it (torch.load's
            weights_only); false only for files you trust.
        class_names: set from the data by the CLI; saved in checkpoints.
        optimizer: "sgd", "adamw" or "rmsprop_tf" (the paper's).
        lr: peak learning rate, reached after warm-up; with `lr_base_batch`, the rate for a
            global batch of that many images.
        lr_base_batch: scale `lr` linearly with the global batch (per-device batch x devices x
            nodes x accumulate_grad_batches): lr x global / lr_base_batch. None: lr as given.
        weight_decay: on conv and linear weights only, never on BatchNorm or biases.
        momentum: for sgd and rmsprop_tf.
        nesterov: Nesterov momentum for sgd.
        schedule: "cosine", "step" (x decay_rate every decay_epochs, the paper's) or "constant".
        warmup_epochs: linear warm-up length (fractions allowed).
        label_smoothing: for the cross-entropy loss.
        drop_path_rate, dropout: stochastic depth at the last block; dropout before the
            classifier (None: the variant's).
        channels_last: run the network in NHWC memory format (faster on CPU and GPU).
        compile: run the network through `torch.compile` (the first steps compile, minutes on a
            CPU, again for each new input size); validate / test / predict compile the folded
            network with inductor's freezing (weights folded into the graph as constants). Where
            compiling is unavailable, one warning and eager execution.
        grad_checkpointing: recompute each block's activations in backward instead of storing
            them: less memory for large variants and images, more compute per step.
        lean_bn_act: in training, each BatchNorm + SiLU stores only its input and recomputes
            the rest in backward: less activation memory, same numbers (see `batchnorm_act`).
        zero_init_head: start a classifier that the weights did not provide at zero. The
            paper's U(+-1/sqrt(classes)) is sized for 1000 classes; with few classes it gives
            large initial logits that stall training on small data sets.
        freeze_backbone_epochs: fine-tuning in two steps: for this many epochs only the
            classifier trains (the backbone runs without gradients, its BatchNorm on the stored
            statistics), then everything trains.
        unfreeze_groups_per_epoch: gradual unfreezing: after the frozen epochs, the backbone's
            block groups (`EfficientNet.block_groups`: stem, one per row of the block table,
            head convolution) start training this many per epoch, from the classifier down;
            groups not yet training run as in the frozen epochs. 0: all at once.
        backbone_lr_ratio: the backbone's learning rate as a fraction of `lr` (the classifier
            gets `lr`); below 1 for fine-tuning.
        layer_lr_decay: layer-wise learning-rate decay: the head convolution learns at
            lr x backbone_lr_ratio, each block group below it at this fraction of the rate of
            the group above (0.7: the stem of B0 at 0.7^8 of the head convolution's). 1: the
            whole backbone at lr x backbone_lr_ratio.
        freeze_bn: keep every BatchNorm layer on its stored statistics and its scale and shift
            fixed for the whole run (small batches, or data close to the weights' own).
        class_weighted_loss: weight the loss by total / (classes x images of the class), so
            rare classes count as much as common ones.
        test_time_flip: whenever the network evaluates (validation during fit too, validate,
            test, predict), average the logits of each image and its mirror image.
        fold_bn: validate, test and predict run a copy of the network with each BatchNorm
            folded into its convolution (`inference.fold_batchnorm`: the same logits, faster);
            fit never does, and checkpoints keep the plain network.
        model_options: further `EfficientNet` options (padding, bn_eps, in_channels, ...).
        preprocessing: the input the network expects (resize, crop, mean/std); None: what the
            weights need. Set from checkpoints, so a trained model keeps its preprocessing.
    """

    def __init__(
        self,
        variant: str | None = None,
        num_classes: int = 1000,
        weights: str | None = None,
        weights_only: bool = True,
        class_names: list[str] | None = None,
        optimizer: Optimizer = "adamw",
        lr: float = 1e-3,
        lr_base_batch: int | None = None,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        nesterov: bool = True,
        schedule: Schedule = "cosine",
        warmup_epochs: float = 1.0,
        decay_rate: float = 0.97,
        decay_epochs: float = 2.4,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        drop_path_rate: float = 0.2,
        dropout: float | None = None,
        channels_last: bool = True,
        compile: bool = False,
        grad_checkpointing: bool = False,
        lean_bn_act: bool = False,
        zero_init_head: bool = True,
        freeze_backbone_epochs: int = 0,
        unfreeze_groups_per_epoch: int = 0,
        backbone_lr_ratio: float = 1.0,
        layer_lr_decay: float = 1.0,
        freeze_bn: bool = False,
        class_weighted_loss: bool = False,
        test_time_flip: bool = False,
        fold_bn: bool = True,
        model_options: dict | None = None,
        preprocessing: dict | None = None,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if freeze_backbone_epochs < 0 or unfreeze_groups_per_epoch < 0:
            raise ValueError(
                f"need freeze_backbone_epochs >= 0 and unfreeze_groups_per_epoch >= 0, got "
                f"{freeze_backbone_epochs} and {unfreeze_groups_per_epoch}"
            )
        if not (0 < backbone_lr_ratio <= 1 and 0 < layer_lr_decay <= 1):
            raise ValueError(
                f"need 0 < backbone_lr_ratio <= 1 and 0 < layer_lr_decay <= 1, got {backbone_lr_ratio} and "
                f"{layer_lr_decay}"
            )
        self.save_hyperparameters()
        self.model = create_model(
            variant,
            num_classes=num_classes,
            weights=weights,
            weights_only=weights_only,
            drop_path_rate=drop_path_rate,
            dropout=dropout,
            # Frozen BatchNorm keeps its initial scale: a zero one would switch the residual branches off.
            **{
                "lean_bn_act": lean_bn_act,
                **({"zero_init_residual": False} if freeze_bn else {}),
                **(model_options or {}),
            },
        )
        if zero_init_head and num_classes and not self.model.provenance.head_loaded:
            nn.init.zeros_(self.model.classifier.weight)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.set_grad_checkpointing(grad_checkpointing)
        self._compiled: CompiledOrEager | None = None  # made at the first call, see `network`
        self._inference_form: tuple[nn.Module, ...] = ()  # (the folded network,) in validate / test / predict
        if preprocessing:
            self.model.provenance = self.model.provenance.with_preprocessing(Preprocessing(**preprocessing))
        self.batchnorms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if freeze_bn:
            for bn in self.batchnorms:
                bn.requires_grad_(False)
        self.loss_weights: torch.Tensor | None = None
        self._trained = False  # set by training or by loading a checkpoint (load_from_checkpoint too)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # Plain types, so the checkpoint loads with torch.load(weights_only=True). The settings the
        # weights chose (SAME padding, BatchNorm eps) are kept, so the checkpoint rebuilds this network.
        self.hparams["variant"] = self.model.variant.name
        self.hparams["preprocessing"] = self.model.provenance.preprocessing.to_dict()
        self.hparams["model_options"] = {**self.model.provenance.build.changes(), **(model_options or {})} or None
        self.metrics = nn.ModuleDict({f"{stage}_metrics": self._make_metrics(num_classes, stage) for stage in STAGES})
        self.extra_val_acc = nn.ModuleDict()  # size -> top-1 there (`extra_eval_sizes`), made in setup
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

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
        if self.training and self.backbone_frozen:
            with torch.no_grad():
                features = self.model.forward_features(x)
            return self.model.forward_head(features)
        if self.training:
            return self.network(x)
        if self.hparams.test_time_flip:
            return (in_chunks(self.network, x) + in_chunks(self.network, x.flip(3))) / 2
        return in_chunks(self.network, x)

    @property
    def network(self):
        """`model` (its folded copy in validate / test / predict), compiled when `compile` is on.
        Neither is a submodule, so checkpoints hold the plain network's keys."""
        inference = bool(self._inference_form) and not self.training
        model = self._inference_form[0] if inference else self.model
        if not self.hparams.compile:
            return model
        if self._compiled is None or self._compiled.module is not model:
            # The inference form's weights are constants: inductor's freezing folds them into the graph.
            self._compiled = CompiledOrEager(model, **({"options": {"freezing": True}} if inference else {}))
        return self._compiled

    def _evaluate_folded(self, start: bool) -> None:
        """At the start of validate / test / predict, fold the weights being evaluated (`fold_bn`);
        at the end, drop the copy."""
        self._inference_form = (fold_batchnorm(self.model),) if start and self.hparams.fold_bn else ()

    @property
    def backbone_frozen(self) -> bool:
        # `self.trainer` raises when detached; LightningModule has no public "is attached" check.
        return self._trainer is not None and self.current_epoch < self.hparams.freeze_backbone_epochs

    def frozen_groups(self, epoch: int | None = None) -> list[list[nn.Module]]:
        """The block groups that do not train in this epoch (or `epoch`), from the input up:
        all of them in the frozen epochs, then fewer by `unfreeze_groups_per_epoch` each epoch."""
        if epoch is None and self._trainer is None:
            return []
        groups, hp = self.model.block_groups(), self.hparams
        unfrozen_epochs = (self.current_epoch if epoch is None else epoch) - hp.freeze_backbone_epochs + 1
        if unfrozen_epochs <= 0:
            return groups
        if not hp.unfreeze_groups_per_epoch:
            return []
        return groups[: max(0, len(groups) - hp.unfreeze_groups_per_epoch * unfrozen_epochs)]

    def model_step(self, batch, stage: str) -> dict:
        """Targets are class indices, or class probabilities (MixUp / CutMix; the metrics then
        count the largest share as the label)."""
        images, targets = batch
        logits = self(images)
        weight = self.loss_weights.to(logits.device) if self.loss_weights is not None and stage == "train" else None
        loss = F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.hparams.label_smoothing)
        labels = targets.argmax(1) if targets.ndim == 2 else targets
        metrics = self.metrics[f"{stage}_metrics"]
        metrics(logits, labels)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(labels),
            sync_dist=stage != "train",
            add_dataloader_idx=False,  # val/ names the evaluation size's loader; extra sizes log val/acc@<size>
        )
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "train",
            batch_size=len(labels),
            add_dataloader_idx=False,
        )
        return {"loss": loss, "preds": logits.argmax(1)}

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx:  # an extra evaluation size
            images, targets = batch
            size, logits = str(images.shape[-1]), self(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
            self.extra_val_acc[size](logits, targets)
            logged = {"batch_size": len(targets), "add_dataloader_idx": False}
            self.log(f"val/acc@{size}", self.extra_val_acc[size], **logged)
            self.log(f"val/loss@{size}", loss, sync_dist=True, **logged)
            return None
        out = self.model_step(batch, "val")
        self.val_confusion.update(out["preds"], batch[1])
        return out

    def test_step(self, batch, batch_idx):
        out = self.model_step(batch, "test")
        self.test_confusion.update(out["preds"], batch[1])
        return out

    def predict_step(self, batch, batch_idx):
        """Class probabilities, and the images' positions in the predict list."""
        images, indices = batch
        return {"index": indices, "probs": self(images).float().softmax(1)}

    def on_train_epoch_start(self) -> None:
        hp, epoch = self.hparams, self.current_epoch
        frozen_groups, total = self.frozen_groups(), len(self.model.block_groups())
        before = len(self.frozen_groups(epoch - 1)) if epoch else total
        if (hp.freeze_backbone_epochs or hp.unfreeze_groups_per_epoch) and len(frozen_groups) < before:
            training = total - len(frozen_groups)
            rank_zero_info(
                f"epoch {epoch}: the backbone trains from now on"
                if not frozen_groups
                else f"epoch {epoch}: the top {training} of the backbone's {total} block groups train"
            )
        fixed = {id(p) for bn in self.batchnorms for p in bn.parameters()} if hp.freeze_bn else set()
        frozen = {id(p) for modules in frozen_groups for m in modules for p in m.parameters()}
        head = {id(p) for p in self.model.classifier.parameters()}
        for p in self.model.parameters():
            if id(p) not in head and id(p) not in fixed:
                p.requires_grad_(id(p) not in frozen)
        self.model.train()  # undo the frozen epochs' eval mode; on_train_batch_start sets it again where due

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning switches the module to train mode around validation; frozen BatchNorm
        # layers go back to their stored statistics every step.
        if self.hparams.freeze_bn:
            for bn in self.batchnorms:
                bn.eval()
        if self.backbone_frozen:
            for m in self.model.modules():
                if m is not self.model.classifier and m is not self.model.dropout:
                    m.eval()
        else:
            for modules in self.frozen_groups():
                for m in modules:
                    m.eval()

    def setup(self, stage: str) -> None:
        # The data may crop at another size (--data.image_size): checkpoints record what it used.
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "preprocessing"):
            self.model.provenance = self.model.provenance.with_preprocessing(datamodule.preprocessing)
            self.hparams["preprocessing"] = datamodule.preprocessing.to_dict()
        for size in getattr(datamodule, "extra_eval_sizes", []):
            if str(size) not in self.extra_val_acc:
                self.extra_val_acc[str(size)] = MulticlassAccuracy(self.hparams.num_classes, top_k=1, average="micro")
        if stage == "fit" and self.hparams.class_weighted_loss:
            if not hasattr(datamodule, "class_counts"):
                raise ValueError("class_weighted_loss needs a data module with class_counts()")
            counts = torch.tensor(datamodule.class_counts(), dtype=torch.float32).clamp(min=1)
            self.loss_weights = counts.sum() / (len(counts) * counts)
        freezes = self.hparams.freeze_backbone_epochs or self.hparams.unfreeze_groups_per_epoch
        if stage == "fit" and freezes and isinstance(self.trainer.strategy, DDPStrategy):
            # The frozen backbone gets no gradients in the first epochs; DDP must not wait for them.
            # DDPStrategy takes find_unused_parameters only at construction (which the user's config
            # owns); its kwargs are read when the model is wrapped, after this setup.
            self.trainer.strategy._ddp_kwargs["find_unused_parameters"] = True

    def _require_trained_classifier(self, stage: str) -> None:
        trained = self.model.provenance.head_loaded or self._trained or self.trainer.ckpt_path is not None
        if not trained:
            raise ValueError(
                f"{stage}: the network has no trained classifier for these {self.hparams.num_classes} classes (weights: "
                f"{self.hparams.weights}): pass --ckpt_path of a checkpoint trained on them"
            )

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            self._require_trained_classifier("validate")
            self._evaluate_folded(True)

    def on_validation_end(self) -> None:
        self._evaluate_folded(False)

    def on_test_start(self) -> None:
        self._require_trained_classifier("test")
        self._evaluate_folded(True)

    def on_test_end(self) -> None:
        self._evaluate_folded(False)

    def on_predict_start(self) -> None:
        self._require_trained_classifier("predict")
        self._evaluate_folded(True)

    def on_predict_end(self) -> None:
        self._evaluate_folded(False)

    def on_train_start(self) -> None:
        self._trained = True
        # Lightning logs the hyperparameters given at construction (after on_fit_start); add
        # the resolved variant and input.
        for logger in self.loggers:
            logger.log_hyperparams({"variant": self.hparams["variant"], "preprocessing": self.hparams["preprocessing"]})

    def on_validation_epoch_end(self):
        # Callbacks (the W&B report) have read the matrix by now; start the next epoch clean.
        self.val_confusion.reset()

    def on_test_epoch_end(self):
        self.test_confusion.reset()

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay, hp.backbone_lr_ratio, hp.layer_lr_decay)
        optimizer = make_optimizer(hp.optimizer, groups, self.scaled_lr(), hp.momentum, hp.nesterov)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        factor = lr_lambda(
            hp.schedule,
            total_steps,
            total_steps / epochs,
            hp.warmup_epochs,
            hp.decay_rate,
            hp.decay_epochs,
            hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def scaled_lr(self) -> float:
        """`lr`, scaled to the global batch when `lr_base_batch` is set."""
        hp = self.hparams
        if not hp.lr_base_batch:
            return hp.lr
        batch = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("batch_size")
        if not batch:
            raise ValueError("lr_base_batch needs the data module's batch_size")
        trainer = self.trainer
        lr, global_batch = scale_lr(hp.lr, hp.lr_base_batch, batch, trainer.world_size, trainer.accumulate_grad_batches)
        rank_zero_info(
            f"learning rate {hp.lr:g} per {hp.lr_base_batch} images, global batch {global_batch} (batch {batch} x "
            f"{trainer.world_size} devices x {trainer.accumulate_grad_batches} accumulated): {lr:g}"
        )
        return lr

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The evaluation size is the preprocessing's crop (test / predict / export use it); the
        # training size is recorded beside it.
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_size"):
            checkpoint["image_sizes"] = {"train": datamodule.train_size, "eval": datamodule.preprocessing.crop_size}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._trained = True
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved and list(saved) != self.class_names:
            raise ValueError(
                f"the checkpoint was trained on classes {list(saved)[:5]}{'...' if len(saved) > 5 else ''} but the "
                f"data has {self.class_names[:5]}{'...' if len(self.class_names) > 5 else ''}: point --data.root at "
                f"a folder with the checkpoint's classes, or fine-tune with --model.weights CKPT instead"
            )
