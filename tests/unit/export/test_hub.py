"""The hub folder in timm's layout: loaded by timm and by this project with identical logits; upload."""

import dataclasses
import json
import math
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from timm.data import resolve_data_config

from effnet_lightning import create_model
from effnet_lightning.cli.app import main
from effnet_lightning.export.folder import export_model
from effnet_lightning.models.factory import imagenet_categories
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.state_dicts import WeightsError
from tests.helpers.networks import randomise_batchnorm
from tests.helpers.weights_cache import add_to_cache

HUB_EXPORTS = {  # name: (variant, build options, timm's architecture)
    "b0": ("b0", {}, "efficientnet_b0"),
    "tf-lite0": ("lite0", {"padding": "same", "bn_eps": 1e-3, "bn_momentum": 0.01}, "tf_efficientnet_lite0"),
    "b1-tv-bn": ("b1", {"bn_eps": 1e-3, "bn_momentum": 0.01}, "efficientnet_b1"),  # torchvision's b5-b7 BatchNorm
    "b0-grey": ("b0", {"in_channels": 1}, "efficientnet_b0"),
    "tf-v2-s": ("v2-s", {"padding": "same", "bn_eps": 1e-3, "bn_momentum": 0.01}, "tf_efficientnetv2_s"),
    "v2-s-tv-bn": ("v2-s", {"bn_eps": 1e-3}, "efficientnetv2_s"),  # torchvision's V2 BatchNorm
    # timm builds v2-b0 only as a TF port: symmetric padding and PyTorch's BatchNorm through model_args
    "v2-b0": ("v2-b0", {}, "tf_efficientnetv2_b0"),
    "v2-rw-t": ("v2-rw-t", {}, "efficientnetv2_rw_t"),
}


def test_exported_hub_folder_loads_in_timm_and_back_with_identical_logits(offline_hub, tmp_path):
    cache = huggingface_hub.constants.HF_HUB_CACHE
    classes = ["cat", "dog", "eel", "fox"]
    pre = Preprocessing.for_resolution(72, crop_pct=0.9, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear")
    for i, (name, (variant, options, architecture)) in enumerate(HUB_EXPORTS.items()):
        channels = options.get("in_channels", 3)
        model = create_model(variant, num_classes=4, **options)
        model = randomise_batchnorm(model, seed=i, in_channels=channels).eval()
        model.provenance = model.provenance.with_preprocessing(pre)
        info = export_model(model, tmp_path / name, class_names=classes, formats=["hub"], source="run.ckpt")
        # measured 0.0 here: the same operations in both libraries; float rounding at most elsewhere
        assert info["files"] == {"hub": "hub"} and info["max_abs_logit_difference"]["hub"] <= 1e-5
        config = json.loads((tmp_path / name / "hub" / "config.json").read_text())
        assert config["architecture"] == architecture
        assert config["label_names"] == classes and config["model_args"]["in_chans"] == channels
        add_to_cache(Path(cache), f"me/{name}", folder=tmp_path / name / "hub")  # as if pushed

        theirs = timm.create_model(f"hf-hub:me/{name}", pretrained=True).eval()
        back = create_model(weights=f"hf-hub:me/{name}").eval()
        x = torch.randn(3, channels, 72, 72, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            expected = model(x)
            assert (theirs(x) - expected).abs().max().item() <= 1e-6 * expected.abs().max().item(), name
            assert (back(x) - expected).abs().max().item() == 0, name  # this project's own network, reloaded
        assert expected.std() > 0.1  # logits that depend on the input, not a washed-out constant
        assert back.variant.name == variant and back.provenance.build == model.provenance.build
        # one grey channel: the mean of the RGB statistics, as timm reads them
        grey = dataclasses.replace(pre, mean=(sum(pre.mean) / 3,), std=(sum(pre.std) / 3,))
        expected_pre = pre if channels == 3 else grey
        assert back.provenance.categories == tuple(classes) and back.provenance.preprocessing == expected_pre
        data = resolve_data_config({}, model=theirs)  # timm's preprocessing of the folder
        assert data["input_size"] == (channels, 72, 72) and data["interpolation"] == "bilinear"
        assert math.floor(72 / data["crop_pct"]) == pre.resize_size == 80
        assert data["mean"] == pytest.approx(expected_pre.mean) and data["std"] == pytest.approx(expected_pre.std)
    card = (tmp_path / "b0" / "hub" / "README.md").read_text()
    assert "library_name: timm" in card and "Classes (4): cat, dog, eel, fox" in card and "from `run.ckpt`" in card
    assert "Input: 3 x 72 x 72: 80 px short side (bilinear)" in card
    # networks timm has no architecture for: one line, nothing written
    for model, message in [
        (create_model("phi1_a1.3_b1.1_g1", num_classes=4), "variant phi1_a1.3_b1.1_g1 is a custom compound scaling"),
        (
            create_model("b0", num_classes=4, activation="relu"),
            "b0 built with activation relu has no timm architecture",
        ),
    ]:
        with pytest.raises(WeightsError, match=message):
            export_model(model, tmp_path / "refused", class_names=classes, formats=["hub"])
        assert not (tmp_path / "refused").exists()


def test_push_to_uploads_the_checked_hub_folder(offline_hub, tmp_path, monkeypatch, capsys):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)  # what would be uploaded, read at upload time
        uploads.append(
            (repo_id, sorted(p.name for p in folder.iterdir()), json.loads((folder / "config.json").read_text()))
        )
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    created = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: created.append((repo, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.chdir(tmp_path)
    args = [
        "export",
        "--model.weights",
        "hf-hub:timm/efficientnet_b0.ra_in1k",
        "--output_dir",
        "out",
        "--formats",
        "[safetensors]",
    ]
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(SystemExit) as stopped:  # no token: refused before any export
        main([*args, "--push_to", "me/b0-test"])
    assert stopped.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --push_to me/b0-test needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    main([*args, "--push_to", "me/b0-test"])
    assert created == [("me/b0-test", {"repo_type": "model", "private": True, "exist_ok": True})]
    ((repo, files, config),) = uploads
    assert repo == "me/b0-test" and files == ["README.md", "config.json", "model.safetensors"]
    assert config["architecture"] == "efficientnet_b0" and config["num_classes"] == 1000
    assert config["label_names"] == list(imagenet_categories())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.yaml",
        "hub",
        "model.json",
        "model.safetensors",
    ]
    assert 'create_model("hf-hub:me/b0-test", pretrained=True)' in (tmp_path / "out" / "hub" / "README.md").read_text()
    assert "export: pushed" in capsys.readouterr().out
