import atexit
import os
import shutil
import tempfile

import pytest
import torch

from effnet_lightning.data import demo

# No test may reach the network or prompt for W&B credentials.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Hub weights come only from caches the tests build (test_hub.py), never from a real cache or the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="empty-hf-cache-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ.pop("HF_TOKEN", None)  # uploads are tested with the upload call replaced
# Shards read from a URL are cached by litdata in a folder the tests own.
os.environ["LITDATA_CACHE_DIR"] = tempfile.mkdtemp(prefix="litdata-cache-")
atexit.register(shutil.rmtree, os.environ["LITDATA_CACHE_DIR"], ignore_errors=True)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0, in_channels: int = 3, size: int = 64) -> torch.nn.Module:
    """Random BN scales and shifts, and running statistics measured on random images with them
    in place: non-trivial values, so a wrong mapping cannot hide, under which activations stay
    near unit scale and the logits depend on the input (with unit statistics that do not match
    the activations, random weights wash the input out by the head, or blow it up)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the statistics of the batch below
        model.train()
        for m in model.modules():  # BatchNorm measures; dropout and stochastic depth stay off
            if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.training = False
        model(torch.randn(8, in_channels, size, size, generator=g))
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model.train(was_training)


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


def make_bad_folder(root, per_class: int = 6):
    """Class folders of good images, plus every kind of bad or odd file in class `ant`: a
    truncated JPEG, an empty file, text under an image name, a dangling link, an unreadable file
    (where permissions apply), a plain text file, CMYK, RGBA, 16-bit and grayscale images, and
    hidden files and folders. Returns {kind: file name}."""
    from PIL import Image

    for c_index, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (48, 40), (c_index * 80, i * 30, 100)).save(root / name / f"{i}.png")
    ant = root / "ant"
    full = ant / "full.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, quality=95)
    data = full.read_bytes()
    (ant / "truncated.jpg").write_bytes(data[: len(data) // 2])
    full.unlink()
    (ant / "empty.jpg").write_bytes(b"")
    (ant / "text.png").write_text("not a picture")
    (ant / "notes.txt").write_text("a plain file: not listed")
    (ant / "dangling.jpg").symlink_to(root / "missing.jpg")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(ant / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (10, 200, 10, 128)).save(ant / "rgba.png")
    Image.new("I;16", (40, 40), 40000).save(ant / "deep.png")
    Image.new("L", (40, 40), 90).save(ant / "gray.png")
    (ant / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(ant / ".hidden" / "skip.png")
    Image.new("RGB", (8, 8)).save(ant / ".thumb.png")
    (root / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".cache" / "not_a_class.png")
    kinds = {"truncated": "truncated.jpg", "empty": "empty.jpg", "text": "text.png", "dangling": "dangling.jpg"}
    if os.geteuid() != 0:  # root reads any file
        Image.new("RGB", (8, 8)).save(ant / "locked.png")
        (ant / "locked.png").chmod(0)
        kinds["unreadable"] = "locked.png"
    return kinds


@pytest.fixture
def bad_folder(tmp_path):
    root = tmp_path / "bad"
    return root, make_bad_folder(root)
