import atexit
import os
import shutil
import tempfile

import huggingface_hub.constants
import pytest
import timm
import torch

from effnet_lightning.data import demo
from effnet_lightning.data.shards import write_shards
from tests.helpers.images import make_bad_folder
from tests.helpers.networks import randomise_batchnorm
from tests.helpers.weights_cache import REPOS, add_to_cache

# No test may reach the network or prompt for W&B credentials.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Hub weights come only from caches the tests build (the `hub_cache` fixture below), never from a real cache or the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="empty-hf-cache-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ.pop("HF_TOKEN", None)  # uploads are tested with the upload call replaced
# Shards read from a URL are cached by litdata in a folder the tests own.
os.environ["LITDATA_CACHE_DIR"] = tempfile.mkdtemp(prefix="litdata-cache-")
atexit.register(shutil.rmtree, os.environ["LITDATA_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return demo.generate(tmp_path_factory.mktemp("data") / "demo")


@pytest.fixture(scope="session")
def small_root(demo_root, tmp_path_factory):
    """10 train images per class; 71 validation images, an odd count that no even split pads."""
    root = tmp_path_factory.mktemp("small")
    for split, per_class in (("train", 10), ("val", 7)):
        for i, name in enumerate(demo.CLASSES):
            (root / split / name).mkdir(parents=True)
            for src in sorted((demo_root / split / name).glob("*.png"))[: per_class + (split == "val" and i == 0)]:
                shutil.copy(src, root / split / name / src.name)
    return root


@pytest.fixture
def bad_folder(tmp_path):
    root = tmp_path / "bad"
    return root, make_bad_folder(root)


@pytest.fixture(scope="session")
def small_shards(small_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "small"
    write_shards(small_root, out, workers=2, say=lambda line: None)
    return out


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """{repo: the timm model in the cache}, with non-trivial BatchNorm statistics."""
    cache = tmp_path_factory.mktemp("hf-cache")
    models = {}
    for i, repo in enumerate(REPOS):
        torch.manual_seed(i)
        model = timm.create_model(repo.split("/")[1], pretrained=False)
        models[repo] = randomise_batchnorm(model, seed=i).eval()
        add_to_cache(cache, repo, models[repo])
    add_to_cache(cache, "timm/resnet50.a1_in1k", config={"architecture": "resnet50", "num_classes": 1000})
    # trained at 288 px, published with a 320-px test size
    b3 = timm.create_model("efficientnet_b3.ra2_in1k", pretrained=False).pretrained_cfg
    add_to_cache(
        cache, "timm/efficientnet_b3.ra2_in1k", config={"architecture": "efficientnet_b3", "pretrained_cfg": b3}
    )
    return cache, models


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    cache, models = hub_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return models
