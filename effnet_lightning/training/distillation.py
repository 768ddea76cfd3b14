"""Knowledge distillation: a frozen teacher's outputs as targets for the student.

    teacher = Teacher.load("runs/teacher/checkpoints/best.ckpt")   # what --model.weights or --ckpt_path take
    distill = Distill(teacher, alpha=0.25, temperature=1.0)
    loss, parts = distill.loss(images, logits, label_loss, student_preprocessing)

The teacher sees the student's own augmented batch (the same crop, flip, RandAugment, MixUp /
CutMix): resized to the teacher's evaluation size and normalised as the teacher expects, so a
student at a small progressive size still has a teacher at its own size. The loss is
KL(teacher || student) at a temperature (x T^2, so the gradient scale does not depend on T),
mixed with the label loss: alpha = 1 is pure function matching.

`Teacher` is not an `nn.Module` and no module holds it as one: nothing that walks the student's
modules (`train()`, the optimizer, EMA, DDP, the fine-tuning policies, `state_dict`) reaches it.
It runs in its inference form (BatchNorm folded, channels_last, bf16 on a GPU that has it),
always without gradients. Plain PyTorch, no Lightning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effnet_lightning.models.factory import checkpoint_hparams, create_model
from effnet_lightning.models.inference import fold_batchnorm
from effnet_lightning.models.preprocessing import Preprocessing


def state_digest(network: nn.Module) -> str:
    """A content hash of a network's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Teacher:
    """A trained classifier whose outputs the student learns to match, frozen.

    Args:
        network: the trained network (its `provenance` says the input it expects).
        spec: what it was loaded from, as the user gave it (recorded in checkpoints).
        class_names: its classes, in output order; None when its weights do not name them.
    """

    def __init__(self, network: nn.Module, spec: str, class_names: list[str] | None):
        self.spec = spec
        self.class_names = class_names
        self.preprocessing: Preprocessing = network.provenance.preprocessing
        self.variant = network.variant.name
        self.digest = state_digest(network)
        network.eval().requires_grad_(False)
        self.network = fold_batchnorm(network).to(memory_format=torch.channels_last)
        self.network.eval().requires_grad_(False)

    @classmethod
    def load(cls, spec: str, variant: str | None = None, weights_only: bool = True) -> Teacher:
        """The teacher `spec` names: a checkpoint of this project, a published set ("imagenet",
        "ns", ...; `variant` says which network), a hub name or an exported hub folder."""
        network = create_model(variant, weights=spec, weights_only=weights_only)
        names = (checkpoint_hparams(spec) or {}).get("class_names") or network.provenance.categories
        return cls(network, spec, list(names) if names else None)

    def to(self, device: torch.device) -> Teacher:
        self.network.to(device)
        return self

    def state_digest(self) -> str:
        """The hash of the folded network as it is now (it never trains: it stays the same)."""
        return state_digest(self.network)

    def check_classes(self, student_classes: list[str]) -> None:
        """The teacher's outputs must be the student's classes, by name and in order."""
        if self.class_names is None:
            raise ValueError(
                f"--distill.teacher {self.spec}: its class names are unknown, so its outputs cannot be matched to the "
                f"student's classes: give a checkpoint of this project or weights that name their classes"
            )
        if self.class_names != list(student_classes):
            theirs, ours = _preview(self.class_names), _preview(student_classes)
            raise ValueError(
                f"--distill.teacher {self.spec} was trained on classes {theirs} but the student's data has {ours}: "
                f"the teacher must be trained on the student's classes (fine-tune it on --data.root first)"
            )

    def inputs(self, images: torch.Tensor, student: Preprocessing) -> torch.Tensor:
        """The student's batch (normalised as `student` says) as the teacher's input: resized to
        its evaluation size, normalised with its mean and std."""
        pre = self.preprocessing
        size = pre.crop_size
        if images.shape[-2:] != (size, size):
            mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
            images = F.interpolate(images.float(), size=(size, size), mode=mode, antialias=True, align_corners=False)
        # (x * std_s + mean_s - mean_t) / std_t, per channel; resizing commutes with it.
        mean_s, std_s, mean_t, std_t = (
            torch.tensor(v, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
            for v in (student.mean, student.std, pre.mean, pre.std)
        )
        return (images * std_s + mean_s - mean_t) / std_t

    def logits(self, images: torch.Tensor, student: Preprocessing) -> torch.Tensor:
        """The teacher's logits for the student's batch, in float32, without gradients."""
        x = self.inputs(images, student).contiguous(memory_format=torch.channels_last)
        bf16 = x.is_cuda and torch.cuda.is_bf16_supported()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            return self.network(x).float()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) of the softmax at `temperature`, averaged over images, x T^2."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * t * t


@dataclass
class Distill:
    """The teacher and how its term mixes with the label loss: (1 - alpha) x label loss +
    alpha x KL at `temperature`."""

    teacher: Teacher
    alpha: float
    temperature: float

    def loss(
        self, images: torch.Tensor, logits: torch.Tensor, label_loss: torch.Tensor, student: Preprocessing
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch and its two terms. `images` and `logits` may hold more
        rows than the label loss saw (unlabelled images): those enter through the teacher's term
        alone."""
        teacher_term = distillation_loss(logits, self.teacher.logits(images, student), self.temperature)
        total = (1 - self.alpha) * label_loss + self.alpha * teacher_term
        return total, {"label_loss": label_loss.detach(), "distill_loss": teacher_term.detach()}


def check_settings(alpha: float, temperature: float, extra_share: float) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"--distill.alpha must be between 0 and 1 (1: the teacher's term alone), got {alpha}")
    if temperature <= 0:
        raise ValueError(f"--distill.temperature must be above 0, got {temperature}")
    if not 0 < extra_share < 1:
        raise ValueError(f"--distill.extra_share must be between 0 and 1 (exclusive), got {extra_share}")


def _preview(names: list[str], n: int = 5) -> str:
    return str(list(names)[:n]) + ("..." if len(names) > n else "")
