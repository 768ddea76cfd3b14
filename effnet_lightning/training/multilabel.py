"""Multi-label training: the loss on multi-hot targets, and the scores of a validation pass:
macro average precision (`map`), and F1 at per-class thresholds chosen on the same
predictions (each class's threshold maximises its F1), micro- and macro-averaged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision

DEFAULT_THRESHOLD = 0.5  # for a class with no positive image in the validation set
MultilabelLoss = Literal["bce", "asl"]


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy per class on sigmoid outputs, averaged over images and classes.
    Label smoothing moves each 0 to smoothing / classes and each 1 by as much below 1 minus
    smoothing; `pos_weight` multiplies each class's positive term (`class_weighted_loss`)."""
    if label_smoothing:
        off = label_smoothing / targets.shape[1]
        targets = targets * (1 - label_smoothing) + off
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The asymmetric loss (Ridnik et al., 2021), averaged over images and classes as the binary
    cross-entropy is: each positive term scaled by (1 - p)^gamma_pos, each negative's
    probability shifted down by `clip` (easy negatives, p < clip, count nothing) and scaled by
    p^gamma_neg. gamma_neg = gamma_pos = clip = 0 is the binary cross-entropy."""
    p = logits.float().sigmoid()
    targets = targets.float()
    shifted = (p - clip).clamp(min=0) if clip > 0 else p
    log_p = F.logsigmoid(logits.float())
    log_not_shifted = torch.log1p(-shifted.clamp(max=1 - 1e-6)) if clip > 0 else F.logsigmoid(-logits.float())
    positive = (1 - p) ** gamma_pos * log_p
    negative = shifted**gamma_neg * log_not_shifted
    if pos_weight is not None:
        positive = positive * pos_weight
    return -(targets * positive + (1 - targets) * negative).mean()


def positive_weights(class_counts: list[int], images: int) -> torch.Tensor:
    """negatives / positives per class among `images` training images (at least one positive
    counted), so each class's positives weigh as much as its negatives."""
    positives = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return (images - positives).clamp(min=1) / positives


def _ranked(scores: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One class's images from the highest score down: the scores, the true positives and the
    images called when calling down to each, and where each run of equal scores ends (only
    there can the calls stop: equal scores are called together)."""
    order = torch.argsort(scores, descending=True, stable=True)
    scores = scores[order]
    true_pos = positives[order].to(scores.dtype).cumsum(0)
    called = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    boundary = torch.ones_like(scores, dtype=torch.bool)
    boundary[:-1] = scores[:-1] != scores[1:]
    return scores, true_pos, called, boundary


def best_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class, the threshold (an image is called positive at or above it) that gives the
    largest F1 on these predictions (the fewest images called on ties): halfway between the
    lowest score called and the next score below, so a score that comes out a rounding error
    lower in another run is still called. `DEFAULT_THRESHOLD` for a class without positives."""
    thresholds = torch.full((probs.shape[1],), DEFAULT_THRESHOLD, dtype=probs.dtype)
    for c in range(probs.shape[1]):
        positives = targets[:, c] > 0.5
        if not positives.any():
            continue
        scores, true_pos, called, boundary = _ranked(probs[:, c], positives)
        f1 = 2 * true_pos / (called + positives.sum())
        f1[~boundary] = -1
        k = int(torch.argmax(f1))  # the first (highest-score) maximum
        below = scores[k + 1] if k + 1 < len(scores) else scores.new_tensor(0.0)
        thresholds[c] = (scores[k] + below) / 2
    return thresholds


def _counts(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class: true positives, false positives and false negatives at `thresholds`."""
    called = probs >= thresholds
    truth = targets > 0.5
    true_pos = (called & truth).sum(0).float()
    false_pos = (called & ~truth).sum(0).float()
    false_neg = (~called & truth).sum(0).float()
    return true_pos, false_pos, false_neg


def f1_scores(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """F1 at `thresholds`: micro (over every image-class pair) and macro (the mean over
    classes with a positive image)."""
    true_pos, false_pos, false_neg = _counts(probs, targets, thresholds)
    per_class = 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp(min=1)
    present = (targets > 0.5).any(0)
    micro = 2 * true_pos.sum() / (2 * true_pos.sum() + false_pos.sum() + false_neg.sum()).clamp(min=1)
    return {"f1_micro": micro, "f1_macro": per_class[present].mean() if present.any() else micro.new_tensor(0.0)}


def average_precisions(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each class's average precision; nan for a class without positives (AP is undefined)."""
    present = (targets > 0.5).any(0)
    ap = torch.full((probs.shape[1],), float("nan"))
    if present.any():
        ap[present] = multilabel_average_precision(
            probs[:, present], (targets[:, present] > 0.5).int(), int(present.sum()), average="none"
        ).float()
    return ap


def per_class_scores(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per class: `images` holding it, `ap` (nan without one), and at `thresholds` its
    `precision` (nan when no image is called), `recall` (nan without images) and `f1`."""
    true_pos, false_pos, false_neg = _counts(probs, targets, thresholds)
    positives = true_pos + false_neg
    called = true_pos + false_pos
    nan = torch.tensor(float("nan"))
    present = positives > 0
    return {
        "images": positives.long(),
        "ap": average_precisions(probs, targets),
        "precision": torch.where(called > 0, true_pos / called.clamp(min=1), nan),
        "recall": torch.where(present, true_pos / positives.clamp(min=1), nan),
        "f1": 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp(min=1),
    }


def precision_recall_curve(scores: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One class's precision and recall when calling the images at or above each distinct score,
    from the highest down (recall rising to 1)."""
    positives = truth > 0.5
    _, true_pos, called, boundary = _ranked(scores.double(), positives)
    return true_pos[boundary] / called[boundary], true_pos[boundary] / positives.sum().clamp(min=1)


def macro_average_precision(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean over classes with a positive image of each class's average precision (AP is
    undefined for a class without positives)."""
    return float(average_precisions(probs, targets).nanmean())


def logits_map(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """`macro_average_precision` of logits' sigmoid scores."""
    return macro_average_precision(logits.float().sigmoid(), targets)


@dataclass(frozen=True)
class ScoredPass:
    """A pass's sigmoid scores and multi-hot targets, from every process, and the thresholds it
    is scored at."""

    probs: torch.Tensor
    targets: torch.Tensor
    thresholds: torch.Tensor


class MultilabelScores(Metric):
    """Collects a pass's sigmoid scores and multi-hot targets (gathered from every process
    under DDP); `compute` gives `map`, `f1_micro` and `f1_macro`. With `choose_thresholds`
    (validation), F1 is at the thresholds that maximise it on these scores, left in
    `thresholds`; without (test), at the `thresholds` set before the pass (validation's).

    A pass is gathered and scored once, by whoever asks first (`scored_pass` or `compute`:
    torchmetrics keeps the result until the next update), so the reports that read it at the
    end of a pass and the module's logging share one all-gather."""

    full_state_update = False

    def __init__(self, num_classes: int, choose_thresholds: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.choose_thresholds = choose_thresholds
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.thresholds = torch.full((num_classes,), DEFAULT_THRESHOLD)
        self._scored: ScoredPass | None = None

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().float())

    def scored_pass(self) -> ScoredPass:
        """The pass's gathered scores, targets and thresholds (a collective under DDP the first
        time a pass is asked for: every process calls it)."""
        self.compute()
        return self._scored

    def compute(self) -> dict[str, torch.Tensor]:
        probs = _joined(self.probs).cpu()
        targets = _joined(self.targets).cpu()
        if self.choose_thresholds:
            self.thresholds = best_thresholds(probs, targets)
        self._scored = ScoredPass(probs, targets, self.thresholds.clone())
        return {
            "map": torch.tensor(macro_average_precision(probs, targets)),
            **f1_scores(probs, targets, self.thresholds),
        }


def _joined(parts) -> torch.Tensor:
    return torch.cat(parts) if isinstance(parts, list) else parts
