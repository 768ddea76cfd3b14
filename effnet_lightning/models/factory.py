"""`create_model`: the one way to get a network, from scratch or from pretrained weights.

    create_model("b3", num_classes=10)                       # the paper's initialisation
    create_model("b0", weights="imagenet")                   # torchvision's ImageNet weights
    create_model("lite0", weights="imagenet")                # packaged TF Lite0 weights (PyPI)
    create_model(weights="hf-hub:timm/tf_efficientnet_b3.ns_jft_in1k")   # hub weights, variant b3
    create_model("b7", weights="ns")                         # a published set by short name (weights.py)
    create_model("b0", num_classes=5, weights="file.pth")    # any known layout, new 5-class head
    create_model(weights="export/run/hub")                   # a folder in the hub layout, its classes
    create_model("b0", weights="imagenet", features_only=True)   # a backbone: maps at reductions 2-32

Three steps: `resolve_weights` (what `weights` names: a row of the published table in
`weights.py`, a hub repository or folder, a file, a state dict), `build_network` (the variant
with the options the weights need), `load_into` (the state dict into it). The returned model
declares where its weights came from and what they need in `model.provenance` (source,
preprocessing, build options, class names, classifier loaded).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from effnet_lightning.models import hub
from effnet_lightning.models.efficientnet import EfficientNet, variant_preprocessing
from effnet_lightning.models.features import EfficientNetFeatures, unused_by_features
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.provenance import TF_BATCHNORM, TF_BUILD, TORCHVISION_V2, BuildOptions
from effnet_lightning.models.scaling import Variant, get_variant
from effnet_lightning.models.state_dicts import (
    CLASSIFIERS,
    WeightsError,
    detect_layout,
    load_weights,
    read_checkpoint,
    read_state_dict,
)
from effnet_lightning.models.weights import HubRepo, PublishedWeights, PyPIPackage, TorchvisionFile, find

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
    if layout == "torchvision" and variant.v2:
        return TORCHVISION_V2
    return BuildOptions()


@dataclass(frozen=True)
class WeightsSource:
    """What `weights` resolved to: where its state dict comes from and what the network and the
    input need. None for `preprocessing` / `build`: the variant's default / the state dict's
    layout decides."""

    name: str  # the model's `provenance.source`
    load: Callable[[], Mapping[str, torch.Tensor] | None]
    preprocessing: Preprocessing | None = None
    build: BuildOptions | None = None
    categories: tuple[str, ...] = ()
    variant: str | None = None  # the variant the weights are for, where they say
    revision: str | None = None


def resolve_weights(variant: str | None, weights, weights_only: bool = True) -> WeightsSource:
    """What `weights` names (see `create_model`) for `variant`, read no further than its
    description: published weights, a hub repository or folder, a file, a state dict, none."""
    pretrained = pretrained_source(variant, weights)
    if pretrained is not None:
        return pretrained
    if weights is None:
        return WeightsSource("random init", load=lambda: None)
    if isinstance(weights, Mapping):
        return WeightsSource("state dict", load=lambda: weights)
    if isinstance(weights, (str, os.PathLike)):
        hparams = checkpoint_hparams(weights)
        return WeightsSource(
            str(weights),
            load=partial(read_state_dict, weights, weights_only),
            preprocessing=checkpoint_preprocessing(hparams),
            build=checkpoint_build(hparams),
            variant=(hparams or {}).get("variant"),
        )
    raise WeightsError(
        f"weights must be None, 'imagenet', a short name, 'hf-hub:<repo>', a file path or a state dict, got "
        f"{type(weights).__name__}"
    )


def pretrained_source(variant: str | None, weights) -> WeightsSource | None:
    """The published weights `weights` names ("imagenet", a short name such as "ns", or
    `hf-hub:<repo>`, or a folder in the hub layout) for `variant` (None: the one the weights are
    for, else b0); None for a file, a state dict or no weights. A variant that contradicts the
    weights is an error."""
    if not (hub.is_hub_folder(weights) or hub.is_hub_name(weights)):
        published = find(get_variant(variant or "b0").name, weights) if isinstance(weights, str) else None
        return published_source(published) if published else None
    source = hub_source(str(weights))
    if variant is not None and get_variant(variant).name != source.variant:
        raise WeightsError(
            f"variant {variant} contradicts {weights}, which holds {source.variant} weights: choose variant "
            f"{source.variant} or leave the variant out"
        )
    return source


def published_source(published: PublishedWeights) -> WeightsSource:
    """A row of the published table (`weights.py`), with the loader of its kind of source."""
    source, revision = published.source, None
    if isinstance(source, HubRepo):
        found = hub.hub_weights(hub.PREFIX + source.repo)  # resolves the commit the weights are read at
        name, load, revision = found.name, found.load, found.revision
    elif isinstance(source, TorchvisionFile):
        name, load = published.name, partial(download_state_dict, source.url)
    else:
        name, load = published.name, partial(read_package_file, source, published.variant)
    categories = CATEGORIES[published.categories]()
    return WeightsSource(name, load, published.preprocessing, published.build, categories, published.variant, revision)


def hub_source(name: str) -> WeightsSource:
    """`hf-hub:<repo>[@revision]`, read through huggingface_hub, or a local folder in the hub
    layout (see `hub.py`): the repository's config says the variant, build and preprocessing."""
    found = hub.hub_weights(name)
    categories = found.categories or (imagenet_categories() if found.num_classes == 1000 else ())
    return WeightsSource(
        found.name, found.load, found.preprocessing, found.build, categories, found.variant, found.revision
    )


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order every ImageNet classifier uses."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


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


def read_package_file(source: PyPIPackage, variant: str) -> dict[str, torch.Tensor]:
    """The weights file of `variant` that a PyPI package ships."""
    try:
        module = importlib.import_module(source.package.replace("-", "_"))
    except ImportError:
        raise WeightsError(
            f"ImageNet weights for {variant} come from the PyPI package {source.package}: pip install {source.package}"
        ) from None
    return read_state_dict(getattr(module, source.model_file).get_model_file_path())


# The class lists a published classifier can have, by the name the table gives them.
CATEGORIES: dict[str, Callable[[], tuple[str, ...]]] = {"imagenet-1k": imagenet_categories}


def preprocessing_for(variant: str | Variant | None, weights=None) -> Preprocessing:
    """The input the model will expect: the published weights', a checkpoint's own, else the
    variant's default."""
    variant = variant.name if isinstance(variant, Variant) else variant
    pretrained = pretrained_source(variant, weights)
    if pretrained is not None:
        return pretrained.preprocessing
    v = get_variant(variant or "b0")
    return checkpoint_preprocessing(checkpoint_hparams(weights)) or variant_preprocessing(v)


def create_model(
    variant: str | Variant | None = None,
    num_classes: int | None = None,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    weights_only: bool = True,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    feature_location: str = "block",
    **overrides,
) -> EfficientNet | EfficientNetFeatures:
    """An EfficientNet, from scratch or from pretrained weights.

    Args:
        variant: b0-b8, l2, lite0-lite4, v2-b0 to v2-b3, v2-s/m/l/xl, phi<x> (custom compound
            scaling) or a `scaling.Variant`. None: the one hub weights or a checkpoint of this
            project are for, else b0.
        num_classes: classifier outputs. None: as many as the weights' classifier has (1000
            without weights). If the weights' classifier differs, the backbone loads and the
            classifier is freshly initialised (logged).
        weights: None (the paper's initialisation), "imagenet", a published set by short name
            ("tf", "ns", "ap", "aa", "ra", "ra2": `weights.SHORT_NAMES`), "hf-hub:<repo>[@revision]",
            a weights file (.pth, .pt, .safetensors, Lightning .ckpt) or a state dict, in
            torchvision, timm, EfficientNet-PyTorch or this project's layout.
        weights_only: read a weights file without running pickled code in it; False only for
            files you trust (old pickles of whole models).
        features_only: a backbone (`features.EfficientNetFeatures`) instead of a classifier: it
            returns the feature maps of `out_indices` (0-4: reductions 2, 4, 8, 16, 32) and says
            their channels and reductions in `feature_info`. The weights are the classifier's;
            their head and classifier tensors are not required.
        out_indices: the levels a backbone returns, increasing.
        feature_location: "block" (each level's last block output) or "expansion" (that block's
            expanded map, before its 1x1 projection, as EfficientDet takes it).
        overrides: `EfficientNet` options (padding, bn_eps, bn_momentum, activation, se,
            dropout, drop_path_rate, in_channels, zero_init_residual). Settings the weights need
            (SAME padding for TF-ported weights, torchvision's BatchNorm for b5-b7) are chosen
            automatically; an override wins.
    """
    if features_only and num_classes:
        raise ValueError("a features_only network has no classifier: leave num_classes out")
    source = resolve_weights(variant.name if isinstance(variant, Variant) else variant, weights, weights_only)
    v = variant if isinstance(variant, Variant) else get_variant(variant or source.variant or "b0")
    state_dict = source.load()
    if not features_only:
        return load_into(build_network(v, state_dict, source.build, num_classes, **overrides), state_dict, source)
    network = build_network(v, state_dict, source.build, 0, **overrides)
    optional = unused_by_features(network, out_indices, feature_location)
    return EfficientNetFeatures(load_into(network, state_dict, source, optional), out_indices, feature_location)


def build_network(
    variant: Variant,
    state_dict: Mapping[str, torch.Tensor] | None,
    build: BuildOptions | None = None,
    num_classes: int | None = None,
    **overrides,
) -> EfficientNet:
    """`variant` built as the weights need (`build`; None: as their layout was made) under the
    overrides, with as many classes as their classifier has (1000 without weights) unless
    `num_classes` says."""
    layout = detect_layout(state_dict) if state_dict is not None else None
    if build is None:
        build = layout_build(layout[0], variant) if layout else BuildOptions()
    if num_classes is None:
        head = layout[1].get(f"{CLASSIFIERS[layout[0]]}.weight") if layout else None
        num_classes = head.shape[0] if head is not None and head.ndim == 2 else 1000
    return EfficientNet(variant, num_classes=num_classes, options=build, **overrides)


def load_into(
    model: EfficientNet,
    state_dict: Mapping[str, torch.Tensor] | None,
    source: WeightsSource,
    optional: tuple[str, ...] = (),
) -> EfficientNet:
    """The state dict into `model` (tensors under `optional` may be missing), and the
    provenance that says what it came from and needs."""
    head_loaded = False
    if state_dict is not None:
        layout, head_loaded = load_weights(model, state_dict, source.name, optional)
        log.info("loaded %s weights (%s layout) into %s", source.name, layout, model.variant.name)
    categories = source.categories if model.num_classes == len(source.categories) else ()
    model.provenance = replace(
        model.provenance,
        preprocessing=source.preprocessing or model.provenance.preprocessing,
        source=source.name,
        categories=categories,
        head_loaded=head_loaded,
        revision=source.revision,
    )
    return model
