"""Weights files and layouts: equivalence with torchvision, timm and the other ports, formats,
mismatches named, pickled code refused."""

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet as LiteReference
from efficientnet_pytorch import EfficientNet as LukemelasReference
from safetensors.torch import save_file

from effnet_lightning import create_model
from effnet_lightning.models.hub import parse_architecture
from effnet_lightning.models.state_dicts import WeightsError, detect_layout, read_state_dict
from tests.helpers.cli import run_main
from tests.helpers.fault_doc import expect
from tests.helpers.networks import randomise_batchnorm


class _RunsCode:
    """A pickle payload: unpickling it creates the file it names."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


TOLERANCE = 1e-4


def max_logit_difference(reference, ours, x):
    reference.eval(), ours.eval()
    with torch.no_grad():
        ref = reference(x)
        # the logits depend on the input, so equality means something
        assert (ref[0] - ref[1]).abs().max() > 1e-2
        return (ref - ours(x)).abs().max().item()


@pytest.fixture
def torchvision_b0():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.efficientnet_b0(num_classes=10)).eval()


def test_pickled_code_in_a_weights_file_never_runs_unless_the_user_opts_in(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "code_ran"
    weights = tmp_path / "evil.pth"
    state = create_model("b0", num_classes=10).state_dict()
    torch.save({"state_dict": state, "payload": _RunsCode(marker)}, weights)
    code, line = run_main(
        ["fit", "--model.weights", weights, "--trainer.max_epochs", "0"], capsys, monkeypatch, tmp_path
    )
    assert code == 2 and not marker.exists()
    assert "holds pickled Python objects that are not plain tensors, so it was not loaded" in line
    assert "pass --model.weights_only false to run the code in it" in line
    expect(
        "weights-pickle",
        "holds pickled Python objects that are not plain tensors, so it was not loaded",
        "--model.weights_only false",
    )
    model = create_model("b0", num_classes=10, weights=weights, weights_only=False)  # opting in runs the code
    assert marker.exists() and torch.equal(model.classifier.weight, state["classifier.weight"])


@pytest.mark.parametrize("name", [f"b{i}" for i in range(8)])
def test_equivalent_to_torchvision(name, image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(getattr(torchvision.models, f"efficientnet_{name}")())
    ours = create_model(name, weights=reference.state_dict())  # b5-b7: torchvision's BN eps chosen automatically
    assert ours.stem.bn.eps == reference.features[0][1].eps
    diff = max_logit_difference(reference, ours, image_batch)
    print(f"torchvision {name}: max |logit diff| {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_v2_equivalent_to_torchvision_with_its_parameter_count(size, image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(getattr(torchvision.models, f"efficientnet_v2_{size}")())
    ours = create_model(f"v2-{size}", weights=reference.state_dict())  # torchvision's V2 BN eps chosen automatically
    assert ours.stem.bn.eps == reference.features[0][1].eps == 1e-3
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    diff = max_logit_difference(reference, ours, image_batch)
    print(f"torchvision v2-{size}: max |logit diff| {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize(("name", "variant"), [("efficientnetv2_s", "v2-s"), ("efficientnetv2_rw_t", "v2-rw-t")])
def test_v2_equivalent_to_timms_pytorch_networks(name, variant, image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(timm.create_model(name))
    ours = create_model(variant, weights=reference.state_dict())  # PyTorch padding and BatchNorm, as timm's
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert max_logit_difference(reference, ours, image_batch) <= TOLERANCE
    # timm's own V2-S variants of 2021 are other networks: refused by the hub reader in one line
    if variant == "v2-s":
        with pytest.raises(WeightsError, match="'efficientnetv2_rw_s', not an EfficientNet this project builds"):
            parse_architecture("efficientnetv2_rw_s")


def test_v2_parameter_counts_equal_torchvisions_published_ones():
    # torchvision's weights metadata, counted there on its own networks
    for size in ("s", "m", "l"):
        meta = torchvision.models.get_weight(f"EfficientNet_V2_{size.upper()}_Weights.IMAGENET1K_V1").meta
        with torch.device("meta"):
            assert sum(p.numel() for p in create_model(f"v2-{size}").parameters()) == meta["num_params"]


def test_v2_layouts_refuse_efficientnet_pytorch_weights_in_one_line():
    reference = LukemelasReference.from_name("efficientnet-b0", image_size=64)
    with pytest.raises(WeightsError, match=r"^EfficientNet-PyTorch weights hold no EfficientNetV2"):
        create_model("v2-b0", weights=reference.state_dict())


def test_equivalent_to_timm_efficientnet_b0(image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(timm.create_model("efficientnet_b0"))
    assert max_logit_difference(reference, create_model("b0", weights=reference.state_dict()), image_batch) <= TOLERANCE


def test_equivalent_to_timm_tf_efficientnet_b0(image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(timm.create_model("tf_efficientnet_b0"))
    ours = create_model("b0", weights=reference.state_dict(), padding="same", bn_eps=1e-3)
    assert max_logit_difference(reference, ours, image_batch) <= TOLERANCE
    # the TF port needs SAME padding: symmetric padding gives different logits
    wrong = create_model("b0", weights=reference.state_dict(), bn_eps=1e-3)
    assert max_logit_difference(reference, wrong, image_batch) > 1e-2


def test_equivalent_to_efficientnet_pytorch_b0(image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(LukemelasReference.from_name("efficientnet-b0", image_size=64))
    ours = create_model("b0", weights=reference.state_dict())  # SAME padding, eps 1e-3 from the layout
    assert ours.stem.bn.eps == 1e-3 and type(ours.stem.conv).__name__ == "Conv2dSame"
    assert max_logit_difference(reference, ours, image_batch) <= TOLERANCE


def test_equivalent_to_efficientnet_lite_pytorch_lite0(image_batch):
    torch.manual_seed(0)
    reference = randomise_batchnorm(LiteReference.from_name("efficientnet-lite0", image_size=64))
    assert (
        max_logit_difference(reference, create_model("lite0", weights=reference.state_dict()), image_batch) <= TOLERANCE
    )


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".ckpt"])
def test_weights_files_of_every_format(tmp_path, torchvision_b0, image_batch, suffix):
    state = torchvision_b0.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif suffix == ".ckpt":  # Lightning checkpoint: wrapped, prefixed by the module attribute
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save({f"module.{k}": v for k, v in state.items()} if suffix == ".pt" else state, path)
    ours = create_model("b0", num_classes=10, weights=path)
    assert ours.provenance.source == str(path)
    assert max_logit_difference(torchvision_b0, ours, image_batch) <= TOLERANCE


def test_own_layout_round_trips(tmp_path, image_batch):
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("b1", num_classes=3))
    torch.save(model.state_dict(), tmp_path / "own.pth")
    assert detect_layout(model.state_dict())[0] == "effnet"
    assert (
        max_logit_difference(model, create_model("b1", num_classes=3, weights=tmp_path / "own.pth"), image_batch) == 0
    )


def test_other_class_count_keeps_backbone_and_reinitialises_head(torchvision_b0, image_batch, caplog):
    with caplog.at_level(logging.INFO, logger="effnet_lightning"):
        ours = create_model("b0", num_classes=4, weights=torchvision_b0.state_dict()).eval()
    assert "classifier has 10 classes, model has 4: backbone loaded, classifier freshly initialised" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(image_batch), torchvision_b0.features(image_batch))
    assert ours(image_batch).shape == (2, 4)
    assert torch.all(ours.classifier.bias == 0)


def test_grayscale_stem_is_adapted_from_rgb_weights(torchvision_b0):
    gray = torch.rand(2, 1, 64, 64)
    ours = create_model("b0", num_classes=10, weights=torchvision_b0.state_dict(), in_channels=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(gray), torchvision_b0(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_weights_of_another_variant_name_the_first_mismatching_key(torchvision_b0):
    with pytest.raises(
        WeightsError,
        match=r"'features.0.0.weight' has shape \(32, 3, 3, 3\) but "
        r"'stem.conv.weight' of variant b3 needs \(40, 3, 3, 3\): are these weights for another",
    ):
        create_model("b3", num_classes=10, weights=torchvision_b0.state_dict())


def test_weights_of_a_larger_variant_are_not_partially_loaded():
    larger = timm.create_model("efficientnet_b1").state_dict()  # every b0 tensor, plus more blocks
    with pytest.raises(
        WeightsError, match=r"has 148 tensors that variant b0 has no place for, first 'blocks.0.1.conv_dw"
    ):
        create_model("b0", weights=larger)


def test_missing_tensor_is_named(torchvision_b0):
    state = torchvision_b0.state_dict()
    del state["features.3.1.block.1.1.running_var"]
    with pytest.raises(WeightsError, match=r"no tensor 'features.3.1.block.1.1.running_var' for 'blocks.4.dw.bn"):
        create_model("b0", num_classes=10, weights=state)


def test_unrecognised_layout_is_a_clear_error():
    resnet = torchvision.models.resnet18().state_dict()
    with pytest.raises(WeightsError, match="unrecognised weights layout \\(first keys: conv1.weight"):
        create_model("b0", weights=resnet)


def test_files_with_pickled_code_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": torchvision.models.efficientnet_b0()}, path)  # a whole pickled module
    with pytest.raises(WeightsError, match="holds pickled Python objects that are not plain tensors"):
        read_state_dict(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found: .*nope.pth"):
        create_model("b0", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read .*bad.safetensors as safetensors"):
        create_model("b0", weights=bad)
    with pytest.raises(
        WeightsError,
        match="weights must be None, 'imagenet', a short name, 'hf-hub:<repo>', a file path or a state dict",
    ):
        create_model("b0", weights=42)
