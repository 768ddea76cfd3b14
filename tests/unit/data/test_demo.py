"""The generated demo data set: layout, determinism, and classes that colour does not give away."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from effnet_lightning.data import demo


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return demo.generate(tmp_path_factory.mktemp("demo") / "demo")


def test_layout_and_counts(demo_root):
    for split, per_class in demo.SPLITS.items():
        classes = sorted(p.name for p in (demo_root / split).iterdir())
        assert classes == sorted(demo.CLASSES)
        assert all(len(list((demo_root / split / c).glob("*.png"))) == per_class for c in classes)
    img = Image.open(next((demo_root / "train" / "star").glob("*.png")))
    assert img.size == (96, 96) and img.mode == "RGB"


def test_generation_is_deterministic(demo_root, tmp_path):
    again = demo.generate(tmp_path / "again")
    for name in ("train/ring/ring_007.png", "val/cross/cross_000.png", "test/star/star_019.png"):
        assert (
            hashlib.sha256((demo_root / name).read_bytes()).digest()
            == hashlib.sha256((again / name).read_bytes()).digest()
        )


def test_colour_and_brightness_do_not_give_the_class_away(demo_root):
    """A nearest-centroid classifier on mean colour and brightness stays near chance (10%)."""

    def features(split):
        xs, ys = [], []
        for label, name in enumerate(demo.CLASSES):
            for path in sorted((demo_root / split / name).glob("*.png")):
                a = np.asarray(Image.open(path), dtype=np.float32) / 255
                xs.append(np.concatenate([a.mean((0, 1)), a.std((0, 1)), [a.mean()]]))
                ys.append(label)
        return np.array(xs), np.array(ys)

    x_train, y_train = features("train")
    x_val, y_val = features("val")
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(10)])
    predicted = np.argmin(((x_val[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == y_val).mean()
    print(f"colour/brightness nearest-centroid accuracy: {accuracy:.3f}")
    assert accuracy < 0.25


def test_existing_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="exists but holds no complete demo dataset"):
        demo.generate(tmp_path / "demo")
    assert (tmp_path / "demo" / "mine.txt").read_text() == "user data"
