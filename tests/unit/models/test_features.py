"""Backbones: `create_model(..., features_only=True)` against timm's `features_only` networks."""

import pytest
import timm
import torch

from effnet_lightning import create_model
from effnet_lightning.models.features import EfficientNetFeatures
from effnet_lightning.models.state_dicts import WeightsError
from tests.helpers.networks import randomise_batchnorm

# timm's network, ours, and the options its weights need
PAIRS = {
    "b0": ("efficientnet_b0", "b0", {}),
    "tf-b0": ("tf_efficientnet_b0", "b0", {"padding": "same", "bn_eps": 1e-3}),
    "lite0": ("efficientnet_lite0", "lite0", {}),
    "tf-v2-b0": ("tf_efficientnetv2_b0", "v2-b0", {"padding": "same", "bn_eps": 1e-3}),  # Fused-MBConv levels
}


def timm_pair(key: str, location: str, out_indices=(0, 1, 2, 3, 4)):
    """timm's classifier with random weights, timm's backbone with them, and the classifier's
    state dict."""
    name = PAIRS[key][0]
    torch.manual_seed(0)
    classifier = randomise_batchnorm(timm.create_model(name))
    location_kw = {} if location == "block" else {"feature_location": location}
    backbone = timm.create_model(name, features_only=True, out_indices=out_indices, **location_kw)
    backbone.load_state_dict(classifier.state_dict(), strict=False)
    return backbone.eval(), classifier.state_dict()


@pytest.mark.parametrize("location", ["block", "expansion"])
@pytest.mark.parametrize("key", list(PAIRS))
def test_the_maps_and_feature_info_equal_timms_features_only_network(key, location):
    theirs, weights = timm_pair(key, location)
    ours = create_model(PAIRS[key][1], weights=weights, features_only=True, feature_location=location, **PAIRS[key][2])
    assert isinstance(ours, EfficientNetFeatures)
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction() == [2, 4, 8, 16, 32]
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))  # not square
    with torch.no_grad():
        expected, got = theirs(images), ours.eval()(images)
    assert [tuple(m.shape) for m in got] == [tuple(m.shape) for m in expected]
    difference = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
    print(f"{key}, {location}: channels {ours.feature_info.channels()}, max |difference| {difference:.1e}")
    assert difference <= 1e-5


def test_chosen_levels_leave_out_deeper_blocks_and_load_a_backbones_own_weights():
    theirs, weights = timm_pair("b0", "block", out_indices=(1, 3))
    ours = create_model("b0", weights=weights, features_only=True, out_indices=(1, 3)).eval()
    assert ours.feature_info.channels() == [24, 112] and ours.feature_info.reduction() == [4, 16]
    assert ours.feature_info.module_name() == ["blocks.2", "blocks.10"]
    assert len(ours.blocks) == 11 and not any(k.startswith(("head.", "classifier.")) for k in ours.state_dict())
    # weights without a head or the blocks the backbone leaves out: timm's backbone's own, ours
    again = create_model("b0", weights=theirs.state_dict(), features_only=True, out_indices=(1, 3)).eval()
    again_ours = create_model("b0", weights=ours.state_dict(), features_only=True, out_indices=(1, 3)).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(again(images), ours(images), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(again_ours(images), theirs(images), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(WeightsError, match="has no tensor"):  # a classifier needs its head
        create_model("b0", weights=theirs.state_dict())


def test_larger_variants_have_timms_levels():
    for ours, theirs in (("b3", "efficientnet_b3"), ("lite2", "efficientnet_lite2")):
        expected = timm.create_model(theirs, features_only=True).feature_info
        got = create_model(ours, features_only=True).feature_info
        assert got.channels() == expected.channels() and got.reduction() == expected.reduction()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_indices": (3, 1)}, r"out_indices must be increasing indices of the 5 levels \(0-4: reductions 2, 4, 8"),
        ({"out_indices": (5,)}, "out_indices must be increasing indices"),
        ({"out_indices": ()}, "out_indices must be increasing indices"),
        ({"feature_location": "bottleneck"}, "feature_location must be one of block, expansion, got 'bottleneck'"),
        ({"num_classes": 10}, "a features_only network has no classifier: leave num_classes out"),
    ],
)
def test_bad_backbone_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("b0", features_only=True, **kwargs)
