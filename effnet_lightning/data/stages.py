"""Progressive learning (EfficientNetV2): training in stages of equal epochs whose image size
grows from a fraction of the training size to the training size, and whose regularisation
grows with it.

Stage s of S (ratio (s + 1) / S) trains at `start_size + (size - start_size) x ratio` with
`start_size = size x start`, and each ramped regulariser at `low + (final - low) x s / (S - 1)`:
RandAugment magnitude from 5, MixUp and CutMix alpha from 0, dropout from 0.1 (each from its
final value where that is lower). The final values are the run's own settings
(`--data.randaugment_magnitude`, `--data.mixup_alpha`, `--data.cutmix_alpha`, the model's
dropout), so the last stage trains exactly as a run without stages would.

Pure Python: the data module asks it for the settings of an epoch, the training callback sets
the dropout of the same stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Regulariser = Literal["randaugment", "mixup", "cutmix", "dropout"]
REGULARISERS: tuple[Regulariser, ...] = ("randaugment", "mixup", "cutmix", "dropout")
# Where each ramp starts (EfficientNetV2, Table 6 and google/automl main_tf2.py).
RAMP_START = {"randaugment": 5.0, "mixup": 0.0, "cutmix": 0.0, "dropout": 0.1}


@dataclass(frozen=True)
class Stage:
    """The settings of one stage: `index` of `count`, the training crop size and the values of
    the regularisers (the final value for those that do not ramp; dropout None: the model's)."""

    index: int
    count: int
    image_size: int
    randaugment_magnitude: int
    mixup_alpha: float
    cutmix_alpha: float
    dropout: float | None = None

    def describe(self, regularisers: tuple[Regulariser, ...] = REGULARISERS) -> str:
        """One line: the stage, its size and the values of `regularisers`."""
        values = {
            "randaugment": f"RandAugment magnitude {self.randaugment_magnitude}",
            "mixup": f"MixUp alpha {self.mixup_alpha:.3g}",
            "cutmix": f"CutMix alpha {self.cutmix_alpha:.3g}",
            "dropout": f"dropout {self.dropout:.3g}" if self.dropout is not None else "",
        }
        shown = ", ".join(filter(None, (values[name] for name in regularisers)))
        return f"stage {self.index + 1} of {self.count}: {self.image_size} px" + (f", {shown}" if shown else "")


@dataclass(frozen=True)
class ProgressivePlan:
    """`count` stages over `max_epochs`; stage 0 trains at `start` x the training size."""

    count: int = 1
    start: float = 0.5
    ramp: tuple[Regulariser, ...] = REGULARISERS

    def __post_init__(self):
        if self.count < 1 or not 0 < self.start <= 1:
            raise ValueError(f"stages need count >= 1 and 0 < start <= 1, got count {self.count}, start {self.start}")
        unknown = set(self.ramp) - set(REGULARISERS)
        if unknown:
            raise ValueError(f"stages.ramp: unknown {sorted(unknown)}: choose from {', '.join(REGULARISERS)}")
        object.__setattr__(self, "ramp", tuple(self.ramp))

    def index(self, epoch: int, max_epochs: int) -> int:
        """The stage an epoch belongs to: equal shares of `max_epochs`."""
        return min(self.count - 1, epoch * self.count // max(1, max_epochs))

    def stage(self, epoch: int, max_epochs: int, image_size: int, final: dict[str, float]) -> Stage:
        """The settings of `epoch`; `final` holds the run's randaugment, mixup, cutmix and
        dropout values (the last stage's)."""
        s = self.index(epoch, max_epochs)
        if self.count == 1:
            ratio, progress = 1.0, 1.0
        else:
            ratio, progress = (s + 1) / self.count, s / (self.count - 1)
        start_size = image_size * self.start
        size = image_size if s == self.count - 1 else int(start_size + (image_size - start_size) * ratio)
        values = {}
        for name in REGULARISERS:
            end = float(final[name])
            low = min(RAMP_START[name], end)
            values[name] = low + (end - low) * progress if name in self.ramp else end
        return Stage(
            index=s,
            count=self.count,
            image_size=max(1, size),
            randaugment_magnitude=round(values["randaugment"]),
            mixup_alpha=round(values["mixup"], 4),
            cutmix_alpha=round(values["cutmix"], 4),
            dropout=round(values["dropout"], 4),
        )
