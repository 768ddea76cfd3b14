"""The LightningModule: an EfficientNet from `create_model`, its loss, metrics and optimizer.

Metrics are logged under `train/`, `val/`, `test/`: `loss`, `acc` (top-1) and `acc_top5`,
micro-averaged over samples, at the data's evaluation size; `val/acc@<size>` and
`val/loss@<size>` at each of its extra evaluation sizes. `predict` returns class probabilities per image.
A multi-label model (`task`) has sigmoid outputs and binary cross-entropy, and logs `map`,
`f1_micro` and `f1_macro` for val and test (`multilabel.py`), `val/map@<size>` at extra sizes;
the per-class thresholds of its last validation go into checkpoints.

Built in named phases: `__init__` checks the arguments and saves them as hyperparameters, then
`configure_models` (the network and its forms), `configure_losses` and `configure_metrics`;
`configure_optimizers` when a fit starts. What is frozen in which epoch is `FineTuning`
(`finetuning.py`), the folded and compiled forms are `NetworkForms` (`network_forms.py`), and
what is read from the data module is a Protocol of `effnet_lightning/contracts.py`.
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
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MultilabelAveragePrecision

from effnet_lightning.compat import attached_trainer, find_unused_parameters
from effnet_lightning.contracts import BatchSize, ClassCounts, ImageSizes, LabelKind, Task
from effnet_lightning.models.factory import create_model
from effnet_lightning.models.inference import in_chunks
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.training.distillation import Distill
from effnet_lightning.training.finetuning import FineTuning
from effnet_lightning.training.multilabel import (
    MultilabelLoss,
    MultilabelScores,
    asymmetric_loss,
    bce_loss,
    positive_weights,
)
from effnet_lightning.training.network_forms import NetworkForms
from effnet_lightning.training.optim import Optimizer, Schedule, lr_lambda, make_optimizer, param_groups, scale_lr

SPLITS = ("train", "val", "test")


class EfficientNetModule(L.LightningModule):
    """Train, validate and test an EfficientNet.

    Args:
        variant: b0-b8, l2, lite0-lite4, v2-b0 to v2-b3, v2-s/m/l/xl or phi<x>. None: the one hub
            weights are for, else b0
            (checkpoints record the variant built).
        num_classes: set from the data by the CLI; nobody types it.
        weights: None (from scratch), "imagenet", a published set ("ns", "ap", ...),
            "hf-hub:<repo>[@revision]", or a weights file (see `create_model`).
        weights_only: read the weights file without running pickled code in it (torch.load's
            weights_only); false only for files you trust.
        class_names: set from the data by the CLI; saved in checkpoints.
        task: "multiclass" (softmax, one class per image), "multilabel" (a sigmoid per class:
            any number of classes per image) or "auto": multi-label when the data module says
            its images have several labels (a label file), else multiclass.
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
        multilabel_loss: "bce" (binary cross-entropy) or "asl" (the asymmetric loss, with
            `asl_gamma_neg`, `asl_gamma_pos` and `asl_clip`; see `multilabel.asymmetric_loss`).
        class_weighted_loss: weight the loss by total / (classes x images of the class), so
            rare classes count as much as common ones; multi-label: weight each class's
            positives by its negatives / positives.
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
        task: Task = "auto",
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
        multilabel_loss: MultilabelLoss = "bce",
        asl_gamma_neg: float = 4.0,
        asl_gamma_pos: float = 0.0,
        asl_clip: float = 0.05,
        class_weighted_loss: bool = False,
        test_time_flip: bool = False,
        fold_bn: bool = True,
        model_options: dict | None = None,
        preprocessing: dict | None = None,
    ):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.finetuning = FineTuning(freeze_backbone_epochs, unfreeze_groups_per_epoch, freeze_bn)  # checks its values
        if not (0 < backbone_lr_ratio <= 1 and 0 < layer_lr_decay <= 1):
            raise ValueError(
                f"need 0 < backbone_lr_ratio <= 1 and 0 < layer_lr_decay <= 1, got {backbone_lr_ratio} and "
                f"{layer_lr_decay}"
            )
        if not (asl_gamma_neg >= 0 and asl_gamma_pos >= 0 and 0 <= asl_clip < 1):
            raise ValueError(
                f"need asl_gamma_neg >= 0, asl_gamma_pos >= 0 and 0 <= asl_clip < 1, got {asl_gamma_neg}, "
                f"{asl_gamma_pos} and {asl_clip}"
            )
        self.save_hyperparameters()
        self._trained = False  # set by training or by loading a checkpoint (load_from_checkpoint too)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # A teacher's term in the training loss, set for a fit by the `distill` callback. Not a
        # submodule: the teacher stays out of the optimizer, EMA, DDP and checkpoints.
        self.distill: Distill | None = None
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        """The network (`model`, the only submodule with state) and its forms (`forms`)."""
        hp = self.hparams
        model_options = hp.model_options
        self.model = create_model(
            hp.variant,
            num_classes=hp.num_classes,
            weights=hp.weights,
            weights_only=hp.weights_only,
            drop_path_rate=hp.drop_path_rate,
            dropout=hp.dropout,
            **{"lean_bn_act": hp.lean_bn_act, **self.finetuning.model_options, **(model_options or {})},
        )
        if hp.zero_init_head and hp.num_classes and not self.model.provenance.head_loaded:
            nn.init.zeros_(self.model.classifier.weight)
        if hp.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.set_grad_checkpointing(hp.grad_checkpointing)
        if hp.preprocessing:
            self.model.provenance = self.model.provenance.with_preprocessing(Preprocessing(**hp.preprocessing))
        self.finetuning.fix_batchnorm(self.model)
        # The folded copy and the compiled wrapper: no submodules, so checkpoints hold `model.*` only.
        self.forms = NetworkForms(self.model, compile=hp.compile, fold_bn=hp.fold_bn)
        # Plain types, so the checkpoint loads with torch.load(weights_only=True). The settings the
        # weights chose (SAME padding, BatchNorm eps) are kept, so the checkpoint rebuilds this network.
        hp["variant"] = self.model.variant.name
        hp["preprocessing"] = self.model.provenance.preprocessing.to_dict()
        hp["model_options"] = {**self.model.provenance.build.changes(), **(model_options or {})} or None

    def configure_losses(self) -> None:
        """Cross-entropy with label smoothing (see `loss`); the class weights of
        `class_weighted_loss` come from the data, in `setup`."""
        self.loss_weights: torch.Tensor | None = None

    @property
    def multilabel(self) -> bool:
        return self.hparams.task == "multilabel"

    def configure_metrics(self) -> None:
        """Top-1 and top-5 per split, top-1 per extra evaluation size (made in `setup`, when
        the data names them), the confusion matrices of validation and test. Multi-label:
        `MultilabelScores` for val and test, and the thresholds that validation chose."""
        num_classes = self.hparams.num_classes
        self.metrics = nn.ModuleDict({f"{split}_metrics": self._make_metrics(num_classes, split) for split in SPLITS})
        self.extra_val_acc = nn.ModuleDict()  # size -> top-1 (multi-label: AP) there (`extra_eval_sizes`)
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.scores = nn.ModuleDict(
            {"val": MultilabelScores(num_classes), "test": MultilabelScores(num_classes, choose_thresholds=False)}
        )
        self.thresholds = torch.full((num_classes,), 0.5)  # from the last validation; in checkpoints

    @staticmethod
    def _make_metrics(num_classes: int, split: str) -> MetricCollection:
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            },
            prefix=f"{split}/",
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
    def preprocessing(self) -> Preprocessing:
        """The input the network expects (the data's, once a fit has set it up)."""
        return self.model.provenance.preprocessing

    @property
    def network(self):
        """What runs now (`forms.network`): `model`, or its folded copy in validate / test /
        predict, compiled when `compile` is on."""
        return self.forms.network(self.training)

    def _fit_epoch(self) -> int | None:
        """The current epoch, or None when no trainer is attached (nothing is frozen then)."""
        return self.current_epoch if attached_trainer(self) is not None else None

    @property
    def backbone_frozen(self) -> bool:
        return self.finetuning.backbone_frozen(self._fit_epoch())

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, split: str) -> torch.Tensor:
        """Cross-entropy with label smoothing; in training weighted by class (`class_weighted_loss`).
        Targets are class indices, or class probabilities (MixUp / CutMix). Multi-label: binary
        cross-entropy on multi-hot (or mixed) targets, the weights on the positives."""
        weight = self.loss_weights.to(logits.device) if self.loss_weights is not None and split == "train" else None
        hp = self.hparams
        if self.multilabel and hp.multilabel_loss == "asl":
            return asymmetric_loss(logits, targets, hp.asl_gamma_neg, hp.asl_gamma_pos, hp.asl_clip, pos_weight=weight)
        if self.multilabel:
            return bce_loss(logits, targets, hp.label_smoothing, pos_weight=weight)
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.hparams.label_smoothing)

    def model_step(self, batch, split: str) -> dict:
        """Targets are class indices, or class probabilities (MixUp / CutMix; the metrics then
        count the largest share as the label). In training with a teacher (`distill`), the loss
        mixes in the teacher's term, and a batch may carry unlabelled images as a third element:
        the network sees them with the labelled ones, and only the teacher's term counts them."""
        images, targets = batch[:2]
        n = len(targets)
        if split == "train" and self.distill is not None:
            images = torch.cat([images, batch[2]]) if len(batch) > 2 else images
            all_logits = self(images)
            logits = all_logits[:n]
            loss, terms = self.distill.loss(images, all_logits, self.loss(logits, targets, split), self.preprocessing)
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=True, on_epoch=True, batch_size=n)
        else:
            logits = self(images)
            loss = self.loss(logits, targets, split)
        if self.multilabel:
            return self._multilabel_step(logits, targets, loss, split)
        labels = targets.argmax(1) if targets.ndim == 2 else targets
        metrics = self.metrics[f"{split}_metrics"]
        metrics(logits, labels)
        on_step = split == "train"
        self.log(
            f"{split}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(labels),
            sync_dist=split != "train",
            add_dataloader_idx=False,  # val/ names the evaluation size's loader; extra sizes log val/acc@<size>
        )
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            prog_bar=split != "train",
            batch_size=len(labels),
            add_dataloader_idx=False,
        )
        return {"loss": loss, "preds": logits.argmax(1)}

    def _multilabel_step(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, split: str) -> dict:
        """Log the loss; in val and test, collect the scores that `_log_multilabel_scores` reads
        at the end of the pass."""
        n = len(targets)
        on_step = split == "train"
        self.log(
            f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=not on_step
        )
        probs = logits.float().sigmoid()
        if split in self.scores:
            self.scores[split].update(probs, targets)
        out = {"loss": loss, "preds": probs >= self.thresholds.to(probs.device)}
        if split == "val":  # the W&B samples are called at the thresholds the validation chooses
            out["probs"] = probs.detach()
        return out

    def _log_multilabel_scores(self, split: str) -> None:
        """`split`/map, f1_micro, f1_macro of the pass; validation chooses the thresholds (kept
        for checkpoints and test), test is scored at them."""
        scores = self.scores[split]
        values = scores.compute()  # (the pass's scores, as the reports read them before this hook)
        if scores.choose_thresholds:
            self.thresholds = scores.thresholds.clone()
        scores.reset()
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, prog_bar=True, sync_dist=False)

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx:  # an extra evaluation size
            images, targets = batch
            size, logits = str(images.shape[-1]), self(images)
            loss = self.loss(logits, targets, "val")
            logged = {"batch_size": len(targets), "add_dataloader_idx": False}
            if self.multilabel:
                self.extra_val_acc[size](logits.float().sigmoid(), (targets > 0.5).int())
                self.log(f"val/map@{size}", self.extra_val_acc[size], **logged)
            else:
                self.extra_val_acc[size](logits, targets)
                self.log(f"val/acc@{size}", self.extra_val_acc[size], **logged)
            self.log(f"val/loss@{size}", loss, sync_dist=True, **logged)
            return None
        out = self.model_step(batch, "val")
        if not self.multilabel:
            self.val_confusion.update(out["preds"], batch[1])
        return out

    def test_step(self, batch, batch_idx):
        out = self.model_step(batch, "test")
        if not self.multilabel:
            self.test_confusion.update(out["preds"], batch[1])
        return out

    def predict_step(self, batch, batch_idx):
        """Class probabilities (multi-label: each class's sigmoid, and the labels called, at or
        above their thresholds), and the images' positions in the predict list."""
        images, indices = batch
        logits = self(images).float()
        if self.multilabel:
            probs = logits.sigmoid()
            return {"index": indices, "probs": probs, "labels": probs >= self.thresholds.to(probs.device)}
        return {"index": indices, "probs": logits.softmax(1)}

    def on_train_epoch_start(self) -> None:
        message = self.finetuning.start_epoch(self.model, self.current_epoch)
        if message:
            rank_zero_info(message)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning switches the module to train mode around validation; frozen BatchNorm
        # layers go back to their stored statistics every step.
        self.finetuning.hold_frozen_in_eval(self.model, self._fit_epoch())

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.hparams.task == "auto":
            # Resolved once, from the data; checkpoints record the result.
            multilabel = isinstance(datamodule, LabelKind) and datamodule.multilabel
            self.hparams["task"] = "multilabel" if multilabel else "multiclass"
        if isinstance(datamodule, ImageSizes):
            # The data may crop at another size (--data.image_size): checkpoints record what it used.
            self.model.provenance = self.model.provenance.with_preprocessing(datamodule.preprocessing)
            self.hparams["preprocessing"] = datamodule.preprocessing.to_dict()
            for size in datamodule.extra_eval_sizes:
                if str(size) not in self.extra_val_acc:
                    self.extra_val_acc[str(size)] = self._size_metric()
        if stage == "fit" and self.hparams.class_weighted_loss:
            self.loss_weights = class_weights(datamodule, self.multilabel)
        if (
            stage == "fit"
            and self.finetuning.needs_unused_parameters
            and isinstance(self.trainer.strategy, DDPStrategy)
        ):
            # The frozen backbone gets no gradients in the first epochs; DDP must not wait for them.
            # DDPStrategy takes find_unused_parameters only at construction (which the user's config
            # owns); its kwargs are read when the model is wrapped, after this setup.
            find_unused_parameters(self.trainer.strategy)

    def _size_metric(self):
        """What an extra evaluation size reports: top-1, or for multi-label macro AP."""
        num_classes = self.hparams.num_classes
        if self.multilabel:
            return MultilabelAveragePrecision(num_classes, average="macro", thresholds=None)
        return MulticlassAccuracy(num_classes, top_k=1, average="micro")

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
            self.forms.start_evaluation()

    def on_validation_end(self) -> None:
        self.forms.end_evaluation()

    def on_test_start(self) -> None:
        self._require_trained_classifier("test")
        self.forms.start_evaluation()

    def on_test_end(self) -> None:
        self.forms.end_evaluation()

    def on_predict_start(self) -> None:
        self._require_trained_classifier("predict")
        self.forms.start_evaluation()

    def on_predict_end(self) -> None:
        self.forms.end_evaluation()

    def on_train_start(self) -> None:
        self._trained = True
        # Lightning logs the hyperparameters given at construction (after on_fit_start); add
        # the resolved variant and input.
        for logger in self.loggers:
            logger.log_hyperparams({"variant": self.hparams["variant"], "preprocessing": self.hparams["preprocessing"]})

    def on_validation_epoch_end(self):
        if self.multilabel:
            self._log_multilabel_scores("val")
        # Callbacks (the W&B report) have read the matrix by now; start the next epoch clean.
        self.val_confusion.reset()

    def on_test_epoch_start(self):
        self.scores["test"].thresholds = self.thresholds  # test is scored at validation's

    def on_test_epoch_end(self):
        if self.multilabel:
            self._log_multilabel_scores("test")
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
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, BatchSize) or not datamodule.batch_size:
            raise ValueError("lr_base_batch needs the data module's batch_size")
        batch = datamodule.batch_size
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
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, ImageSizes):
            checkpoint["image_sizes"] = {"train": datamodule.train_size, "eval": datamodule.preprocessing.crop_size}
        if self.multilabel:
            checkpoint["thresholds"] = self.thresholds.tolist()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._trained = True
        if checkpoint.get("thresholds") is not None:
            self.thresholds = torch.tensor(checkpoint["thresholds"])
        saved = checkpoint.get("hyper_parameters", {}).get("class_names")
        if saved and list(saved) != self.class_names:
            raise ValueError(
                f"the checkpoint was trained on classes {list(saved)[:5]}{'...' if len(saved) > 5 else ''} but the "
                f"data has {self.class_names[:5]}{'...' if len(self.class_names) > 5 else ''}: point --data.root at "
                f"a folder with the checkpoint's classes, or fine-tune with --model.weights CKPT instead"
            )


def class_weights(datamodule, multilabel: bool = False) -> torch.Tensor:
    """total / (classes x images of the class) per class, so rare classes count as much as
    common ones (`class_weighted_loss`); multi-label, each class's positive weight."""
    per_class = datamodule.class_counts() if isinstance(datamodule, ClassCounts) else None
    if per_class is None:
        raise ValueError("class_weighted_loss needs a data module with class_counts()")
    if multilabel:
        if not isinstance(datamodule, LabelKind):
            raise ValueError("a multi-label class_weighted_loss needs a data module with train_images()")
        return positive_weights(per_class, datamodule.train_images())
    counts = torch.tensor(per_class, dtype=torch.float32).clamp(min=1)
    return counts.sum() / (len(counts) * counts)
