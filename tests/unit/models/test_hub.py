"""Hub weights by name (`hf-hub:<repo>`, short names) from a hub cache built in the test, against
timm's logits."""

import math

import pytest
import timm
import torch
from timm.data import resolve_data_config

from effnet_lightning import create_model
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.models.factory import imagenet_categories, preprocessing_for
from effnet_lightning.models.state_dicts import WeightsError
from tests.helpers.weights_cache import REPOS, commit_of


def test_hub_weights_give_timms_logits_with_the_repositorys_variant_build_and_preprocessing(offline_hub):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for repo, variant in REPOS.items():
        theirs = offline_hub[repo]
        ours = create_model(weights=f"hf-hub:{repo}").eval()  # no variant: the repository names it
        assert ours.variant.name == variant
        with torch.no_grad():
            diff = (ours(x) - theirs(x)).abs().max().item()
        assert diff <= 1e-4, f"{repo}: max |logit difference| {diff}"
        provenance = ours.provenance
        assert provenance.source == f"hf-hub:{repo}@{commit_of(repo)}" and provenance.revision == commit_of(repo)
        assert provenance.build.padding == ("same" if "/tf_" in repo else "symmetric")
        assert provenance.build.bn_eps == (1e-3 if "/tf_" in repo else 1e-5)
        assert provenance.head_loaded and provenance.categories == imagenet_categories()
        expected = resolve_data_config({}, model=theirs)
        pre = provenance.preprocessing
        assert (pre.crop_size, pre.interpolation) == (expected["input_size"][-1], expected["interpolation"])
        assert pre.resize_size == math.floor(expected["input_size"][-1] / expected["crop_pct"])
        assert pre.mean == pytest.approx(expected["mean"]) and pre.std == pytest.approx(expected["std"])
        test_size = theirs.pretrained_cfg.get("test_input_size", expected["input_size"])[-1]  # V2: above training's
        assert (pre.test_size or pre.crop_size) == test_size
    assert create_model(weights="hf-hub:timm/tf_efficientnet_b0.ap_in1k").provenance.preprocessing.mean == (0.5,) * 3
    # a new classifier for 5 classes on the hub backbone
    five = create_model(num_classes=5, weights="hf-hub:timm/tf_efficientnet_lite0.in1k")
    assert five.classifier.out_features == 5 and not five.provenance.head_loaded


def test_short_names_and_revisions_resolve_to_the_hub_repositories(offline_hub):
    ns = create_model("b0", weights="ns")
    repo = "timm/tf_efficientnet_b0.ns_jft_in1k"
    assert ns.provenance.source == f"hf-hub:{repo}@{commit_of(repo)}"
    pinned = create_model(weights=f"hf-hub:timm/efficientnet_b0.ra_in1k@{commit_of('timm/efficientnet_b0.ra_in1k')}")
    assert pinned.provenance.revision == commit_of("timm/efficientnet_b0.ra_in1k")
    assert create_model("lite0", weights="tf").provenance.source.startswith("hf-hub:timm/tf_efficientnet_lite0.in1k@")


def test_hub_names_that_cannot_be_used_are_one_line_errors(offline_hub):
    cases = [
        (
            {"variant": "b3", "weights": "hf-hub:timm/tf_efficientnet_b0.ns_jft_in1k"},
            (
                "variant b3 contradicts hf-hub:timm/tf_efficientnet_b0.ns_jft_in1k, which holds b0 weights: choose "
                "variant b0 or leave the variant out"
            ),
        ),
        (
            {"weights": "hf-hub:timm/resnet50.a1_in1k"},
            (
                "the repository holds a 'resnet50', not an EfficientNet this project builds ((tf_)efficientnet_b0-b8, "
                "l2, lite0-lite4; (tf_)efficientnetv2_b0-b3, s, m, l, xl; efficientnetv2_rw_t)"
            ),
        ),
        (
            {"variant": "b1", "weights": "ra2"},
            (
                "weights 'ra2' exist for b3, b4, v2-rw-t, not for variant 'b1': choose one of those, or another set (tf, ns, ap, "
                "aa, ra, ra2, in21k, imagenet)"
            ),
        ),
        (
            {"weights": "hf-hub:timm/tf_efficientnet_b9.in1k"},
            (
                "timm/tf_efficientnet_b9.in1k is not in the Hugging Face cache and the hub cannot be reached: run `hf "
                "download timm/tf_efficientnet_b9.in1k` where there is internet (or unset HF_HUB_OFFLINE)"
            ),
        ),
        (
            {"weights": "hf-hub:timm/efficientnet_b0.ra_in1k@0123abc"},
            (
                "timm/efficientnet_b0.ra_in1k@0123abc is not in the Hugging Face cache and the hub cannot be reached: "
                "run `hf download timm/efficientnet_b0.ra_in1k --revision 0123abc` where there is internet (or unset "
                "HF_HUB_OFFLINE)"
            ),
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(WeightsError) as error:
            create_model(**kwargs)
        assert str(error.value) == message


def test_a_published_test_size_is_the_default_evaluation_size_of_a_fine_tune_that_sets_none(offline_hub, small_root):
    pre = preprocessing_for(None, "hf-hub:timm/efficientnet_b3.ra2_in1k")
    assert (pre.crop_size, pre.test_size) == (288, 320)
    data = ImageFolderDataModule(root=small_root, preprocessing=pre.to_dict())
    assert data.train_size == 288 and data.preprocessing.crop_size == 320
    assert data.preprocessing.resize_size == math.floor(320 / pre.crop_pct) and data.preprocessing.test_size is None
    typed = ImageFolderDataModule(root=small_root, image_size=96, preprocessing=pre.to_dict())
    assert typed.train_size == typed.preprocessing.crop_size == 96  # what the user typed wins


def test_b8_and_l2_match_timms_networks():
    # b8: every tensor of timm's network loads into ours, shape by shape (load_weights checks all)
    theirs = timm.create_model("tf_efficientnet_b8", pretrained=False)
    ours = create_model("b8", weights=theirs.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert ours.variant.resolution == 672
    # l2 (480 M parameters): the same count, without allocating it
    with torch.device("meta"):
        theirs = timm.create_model("tf_efficientnet_l2", pretrained=False)
        ours = create_model("l2")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
