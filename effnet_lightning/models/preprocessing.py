"""The input a set of weights expects: resolution, eval resize/crop, normalisation.

Pure Python, so the data side can read it from a model or a checkpoint's hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-trained Lite weights expect (pixel - 127) / 128 on 0-255 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
DEFAULT_CROP_PCT = 0.875
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# "center": the short side to resize_size, keeping the aspect ratio; "squash": both sides to
# resize_size (timm's name; some EfficientNetV2 weights were evaluated so). Then the centre crop.
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """Eval: resize the short side to `resize_size` (`crop_mode` "squash": both sides),
    centre-crop `crop_size`, normalise. Training uses `crop_size` for the random-resized crop.
    `test_size`: the evaluation size the weights were published with where it is above their
    crop (timm's `test_input_size`), the default evaluation size of a fine-tune that sets no
    size."""

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    test_size: int | None = None
    crop_mode: str = "center"

    def __post_init__(self):
        if self.crop_size <= 0 or self.resize_size < self.crop_size:
            raise ValueError(f"need 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        # Plain tuples of floats, so the object round-trips through YAML / checkpoints.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def crop_pct(self) -> float:
        return self.crop_size / self.resize_size

    @classmethod
    def for_resolution(
        cls,
        resolution: int,
        crop_pct: float = DEFAULT_CROP_PCT,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        interpolation: str = "bicubic",
    ) -> Preprocessing:
        """Resize to resolution / crop_pct, crop resolution (the TF convention, crop_pct 0.875)."""
        return cls(int(resolution), math.floor(resolution / crop_pct), tuple(mean), tuple(std), interpolation)

    def resized(self, crop_size: int) -> Preprocessing:
        """The same recipe at another resolution, keeping the crop fraction (and no test size)."""
        pre = Preprocessing.for_resolution(crop_size, self.crop_pct, self.mean, self.std, self.interpolation)
        return replace(pre, crop_mode=self.crop_mode)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["test_size"] is None:  # most weights have none: checkpoints and model.json stay as they were
            del d["test_size"]
        if d["crop_mode"] == "center":  # likewise
            del d["crop_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)
