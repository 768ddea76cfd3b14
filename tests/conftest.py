import os
import shutil

import pytest
import torch

from effnet_lightning import demo_data

# No test may reach the network or prompt for W&B credentials.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine weights, so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return demo_data.generate(tmp_path_factory.mktemp("data") / "demo")


@pytest.fixture(scope="session")
def small_root(demo_root, tmp_path_factory):
    """10 train images per class; 71 validation images, an odd count that no even split pads."""
    root = tmp_path_factory.mktemp("small")
    for split, per_class in (("train", 10), ("val", 7)):
        for i, name in enumerate(demo_data.CLASSES):
            (root / split / name).mkdir(parents=True)
            for src in sorted((demo_root / split / name).glob("*.png"))[: per_class + (split == "val" and i == 0)]:
                shutil.copy(src, root / split / name / src.name)
    return root
