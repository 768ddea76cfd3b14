"""`--distill.*`: fit a student with a frozen teacher's outputs as targets (`training/distillation.py`).

    python cli.py fit --data.root ~/my_images --distill.teacher runs/teacher/checkpoints/best.ckpt
    python cli.py fit --ckpt_path last              # resumes with the same teacher, checked

Checkpoints record what the teacher was (its spec and a content hash), never its tensors; a fit
resumed from one brings the same teacher back (`cli/checkpoints.py`) and refuses it in one line
if the file behind the spec changed since.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from effnet_lightning.contracts import UnlabelledImages
from effnet_lightning.training.distillation import Distill, Teacher, check_settings

DISTILLATION_KEY = "distillation"  # in checkpoints: the settings below and the teacher's digest


class Distillation(L.Callback):
    """Distil a teacher into the model being fitted (only `fit` uses it).

    Args:
        teacher: what `--model.weights` or `--ckpt_path` take: a checkpoint of this project (also
            `best` / `last`: the latest fit's), a published set ("imagenet", "ns", ... with
            `teacher_variant`), a hub name or an exported hub folder. Its classes must be the
            student's. None: no distillation.
        teacher_variant: the teacher's variant where the weights do not say it (published sets).
        alpha: the share of the teacher's term in the loss: (1 - alpha) x label loss + alpha x
            KL(teacher || student); 1 is pure function matching.
        temperature: of both softmaxes in the teacher's term (the term is scaled by T^2).
        extra_root: a folder of images without labels (any depth), added to every training
            batch: they train through the teacher's term alone.
        extra_share: the share of each training batch that comes from `extra_root`; the labelled
            part keeps --data.batch_size (0.5: as many unlabelled images as labelled ones).
    """

    def __init__(
        self,
        teacher: str | None = None,
        teacher_variant: str | None = None,
        alpha: float = 0.25,
        temperature: float = 1.0,
        extra_root: str | None = None,
        extra_share: float = 0.5,
    ):
        check_settings(alpha, temperature, extra_share)
        if extra_root and not teacher:
            raise ValueError("--distill.extra_root trains through a teacher's term: give --distill.teacher too")
        # A file or folder is recorded by its absolute path: a resumed fit finds it from anywhere.
        self.teacher_spec = os.path.abspath(teacher) if teacher and os.path.exists(teacher) else teacher
        self.teacher_variant = teacher_variant
        self.alpha = alpha
        self.temperature = temperature
        self.extra_root = extra_root
        self.extra_share = extra_share
        self.teacher: Teacher | None = None

    @property
    def state_key(self) -> str:
        return "Distillation"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self.teacher_spec:
            return
        self.teacher = Teacher.load(self.teacher_spec, self.teacher_variant, pl_module.hparams.weights_only)
        self.teacher.check_classes(pl_module.class_names)
        pl_module.distill = Distill(self.teacher, self.alpha, self.temperature)
        if self.extra_root:
            datamodule = trainer.datamodule
            if not isinstance(datamodule, UnlabelledImages):
                raise ValueError("--distill.extra_root needs a data module that takes unlabelled images")
            datamodule.add_unlabelled_images(self.extra_root, self.extra_share)
        size = self.teacher.preprocessing.crop_size
        rank_zero_info(
            f"distilling from {self.teacher.variant} ({self.teacher_spec}) at {size} px: "
            f"{1 - self.alpha:g} x label loss + {self.alpha:g} x KL at temperature {self.temperature:g}"
        )

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.teacher is not None:
            self.teacher.to(pl_module.device)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            pl_module.distill = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.teacher is None:
            return
        checkpoint[DISTILLATION_KEY] = {
            "teacher": self.teacher_spec,
            "teacher_variant": self.teacher_variant,
            "teacher_digest": self.teacher.digest,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "extra_root": self.extra_root,
            "extra_share": self.extra_share,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = saved_distillation(checkpoint)
        if self.teacher is None or saved is None or saved["teacher"] != self.teacher_spec:
            return
        if saved["teacher_digest"] != self.teacher.digest:
            raise ValueError(
                f"--distill.teacher {self.teacher_spec} is not the teacher this checkpoint was trained with: its "
                f"weights changed since (content hash {self.teacher.digest[:12]}, the checkpoint's "
                f"{saved['teacher_digest'][:12]}); restore that teacher, or start a new fit without --ckpt_path"
            )


def saved_distillation(checkpoint: Mapping) -> dict | None:
    """The distillation settings a checkpoint's fit used, with its teacher's digest; None if none."""
    saved = checkpoint.get(DISTILLATION_KEY)
    return dict(saved) if isinstance(saved, Mapping) and saved.get("teacher") else None
