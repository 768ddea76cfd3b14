"""What the LightningModule and the callbacks read from a data module, as Protocols.

A data module gives a feature when it has the members of that feature's Protocol; the readers
ask `isinstance(trainer.datamodule, ImageSizes)` and so on (each Protocol is runtime
checkable: the check is that every member is there, not their types).
`data.datamodule.ImageFolderDataModule` has them all (checked by `tests/unit/test_contracts.py`).

This module imports nothing of the project, nor torch or Lightning: both sides import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

# What a model predicts: one class per image, or any number of them (sigmoid outputs); "auto":
# multi-label when the data gives any image more than one label.
Task = Literal["auto", "multiclass", "multilabel"]


@runtime_checkable
class ImageSizes(Protocol):
    """The sizes the data feeds the network, read by the module: `setup` records the
    evaluation input in the checkpoint's hyperparameters and adds a metric per extra size,
    `on_save_checkpoint` records the training and evaluation sizes."""

    # `models.preprocessing.Preprocessing`: the evaluation's resize, crop and normalisation
    # (its `crop_size` is the evaluation size).
    preprocessing: Any
    train_size: int  # the training crop
    extra_eval_sizes: list[int]  # further evaluation sizes, one validation loader each


@runtime_checkable
class ClassCounts(Protocol):
    """Training images per class, read by the module for `class_weighted_loss`."""

    def class_counts(self) -> list[int]: ...


@runtime_checkable
class LabelKind(Protocol):
    """Whether the data gives images several labels each (targets are then multi-hot), read by
    the module when its `task` is "auto"; the number of training images, for the positive
    weights of a multi-label `class_weighted_loss`."""

    multilabel: bool

    def train_images(self) -> int: ...


@runtime_checkable
class BatchSize(Protocol):
    """Images per batch on each device, read by the module to scale the learning rate to the
    global batch (`lr_base_batch`)."""

    @property
    def batch_size(self) -> int: ...


@runtime_checkable
class ProgressiveStages(Protocol):
    """What progressive learning (`callbacks/progressive.py`) needs: the data module builds
    each epoch's training loader from `stage_at(epoch)`, which the callback sets, at sizes
    relative to `train_size`; `next_epoch()` names the epoch a (resumed) fit runs next.
    `hparams` holds the run's own randaugment_magnitude, mixup_alpha, cutmix_alpha, augment."""

    stage_at: Callable[[int], Any] | None  # epoch -> `data.stages.Stage`; None: no stages
    train_size: int
    hparams: Any

    def next_epoch(self) -> int: ...


@runtime_checkable
class SkippedFiles(Protocol):
    """The files left out as unreadable (path: why), reported by the prediction writer."""

    skipped: dict[str, str]


@runtime_checkable
class UnlabelledImages(Protocol):
    """Images without labels in every training batch, for distillation's `--distill.extra_root`:
    the training batches become (images, targets, unlabelled images), the unlabelled part
    `share` of the whole."""

    def add_unlabelled_images(self, root: str, share: float) -> None: ...
