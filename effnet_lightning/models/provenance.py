"""What a network is and where its weights came from, declared once and carried by the network
as `model.provenance` (as timm's `pretrained_cfg`): data, module, CLI and export read it there.

`BuildOptions` are the settings that change what a set of weights computes besides the variant
(padding, BatchNorm eps and momentum, activation, squeeze-and-excitation, input channels): a
checkpoint must rebuild its network with the same ones. This file is their one home, the
BatchNorm defaults included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from effnet_lightning.models.preprocessing import Preprocessing

Padding = Literal["symmetric", "same"]
# The forms a network takes: "plain" is the trainable network, "folded" its inference form
# (BatchNorm folded into the convolutions, `inference.fold_batchnorm`).
Form = Literal["plain", "folded"]


@dataclass(frozen=True)
class BuildOptions:
    """Structural settings of an EfficientNet.

    padding: "symmetric" (PyTorch) or "same" (TensorFlow: weights ported from TF need it).
    bn_eps, bn_momentum: BatchNorm, in PyTorch's momentum convention (TF's 0.99 decay is 0.01).
    activation: None: the variant's (swish; relu6 for Lite).
    se: squeeze-and-excitation (Lite never has it).
    in_channels: image channels (1 for grayscale).
    """

    padding: Padding = "symmetric"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    activation: str | None = None
    se: bool = True
    in_channels: int = 3

    @classmethod
    def from_dict(cls, options: dict | None) -> BuildOptions:
        """From a dict that may hold other keys too (a checkpoint's `model_options`)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (options or {}).items() if k in names})

    def changes(self) -> dict:
        """The settings that differ from the defaults, as plain types (for checkpoints)."""
        default = BuildOptions()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}

    def conflicts(self, other: BuildOptions) -> dict:
        """{name: (self's, other's)} for every setting in which the two differ."""
        return {k: (v, getattr(other, k)) for k, v in asdict(self).items() if getattr(other, k) != v}


# Weights ported from TensorFlow (EfficientNet-PyTorch, the Lite packages, timm's tf_ weights).
TF_BUILD = BuildOptions(padding="same", bn_eps=1e-3, bn_momentum=0.01)
# torchvision built b5-b7 (whose weights came from TF) with TF's BatchNorm, b0-b4 with PyTorch's.
TF_BATCHNORM = BuildOptions(bn_eps=1e-3, bn_momentum=0.01)
# torchvision builds EfficientNetV2 with TF's BatchNorm eps and PyTorch's momentum.
TORCHVISION_V2 = BuildOptions(bn_eps=1e-3)


@dataclass(frozen=True)
class Provenance:
    """Where a network's weights came from and what they need.

    source: "random init", a published set ("torchvision EfficientNet_B0_Weights..."), a file
        path, or a hub repository.
    preprocessing: the input the weights expect (resize, crop, normalisation).
    build: the structural settings the network was built with.
    categories: the classifier's class names where the weights name them (ImageNet's).
    head_loaded: the classifier came with the weights (False: freshly initialised).
    revision: the resolved commit of hub weights.
    form: "plain", or "folded" (BatchNorm in the convolutions: for evaluation only).
    """

    preprocessing: Preprocessing
    build: BuildOptions = BuildOptions()
    source: str = "random init"
    categories: tuple[str, ...] = ()
    head_loaded: bool = False
    revision: str | None = None
    form: Form = "plain"

    def with_preprocessing(self, preprocessing: Preprocessing) -> Provenance:
        return replace(self, preprocessing=preprocessing)

    def folded(self) -> Provenance:
        return replace(self, form="folded")

    def without_head(self) -> Provenance:
        """After the classifier was replaced by a fresh one."""
        return replace(self, head_loaded=False, categories=())
