import pytest
import torch
from PIL import Image

from effnet_lightning.data import ImageFolderDataModule, eval_transform, list_images, stratified_split
from effnet_lightning.preprocessing import Preprocessing


def make_folder(root, classes=("ant", "bee", "cat"), per_class=10, size=(40, 30)):
    for c_index, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (c_index * 80, i * 20, 100)).save(root / c / f"{i}.png")
    return root


def test_single_folder_is_split_stratified_and_deterministically(tmp_path):
    make_folder(tmp_path, per_class=10)
    (tmp_path / ".hidden").mkdir()
    dm = ImageFolderDataModule(root=str(tmp_path), val_fraction=0.2, seed=3)
    assert dm.class_names == ["ant", "bee", "cat"] and dm.num_classes == 3
    dm.setup("fit")
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train) == 24 and len(val) == 6
    assert sorted(label for _, label in val) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in train} & {p for p, _ in val}
    again = ImageFolderDataModule(root=str(tmp_path), val_fraction=0.2, seed=3)
    again.setup("fit")
    assert again.splits["val"] == val
    other = ImageFolderDataModule(root=str(tmp_path), val_fraction=0.2, seed=4)
    other.setup("fit")
    assert other.splits["val"] != val


def test_train_val_test_folders(tmp_path):
    for split in ("train", "val", "test"):
        make_folder(tmp_path / split, per_class=4)
    dm = ImageFolderDataModule(root=str(tmp_path), batch_size=5, num_workers=0)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [12, 12, 12]
    assert all("/test/" in p for p, _ in dm.splits["test"])


def test_batches_have_the_crop_size_and_normalisation(tmp_path):
    make_folder(tmp_path, per_class=10)
    pre = Preprocessing(crop_size=48, resize_size=56, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    dm = ImageFolderDataModule(root=str(tmp_path), batch_size=4, num_workers=0, preprocessing=pre.to_dict())
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32 and labels.dtype == torch.int64
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 48, 48)
    # a flat (c, g, b) image normalises to ((c/255 - 0.5) / 0.25, ...)
    path, label = dm.splits["val"][0]
    expected = (torch.tensor(Image.open(path).getpixel((0, 0)), dtype=torch.float32) / 255 - 0.5) / 0.25
    torch.testing.assert_close(eval_transform(pre)(Image.open(path))[:, 24, 24], expected, atol=1e-4, rtol=0)


def test_image_size_overrides_the_crop_and_keeps_the_crop_fraction(tmp_path):
    make_folder(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=128, preprocessing=Preprocessing(300, 320).to_dict())
    assert (dm.preprocessing.crop_size, dm.preprocessing.resize_size) == (128, 136)


def test_list_images_skips_hidden_files_and_other_extensions(tmp_path):
    make_folder(tmp_path, classes=("a",), per_class=2)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".thumb.png").write_bytes(b"")
    assert [p.rsplit("/", 1)[1] for p, _ in list_images(tmp_path, ["a"])] == ["0.png", "1.png"]


def test_stratified_split_keeps_singleton_classes_in_train():
    samples = [("a0", 0), ("b0", 1), ("b1", 1), ("b2", 1), ("b3", 1)]
    train, val = stratified_split(samples, 0.25, seed=0)
    assert ("a0", 0) in train and len(val) == 1 and val[0][1] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"root": "/nonexistent/folder"}, "--data.root /nonexistent/folder is not a folder"),
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
        ({"image_size": -3}, "image_size must be positive, got -3"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ImageFolderDataModule(**kwargs)


def test_folder_without_classes(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no class folders in"):
        ImageFolderDataModule(root=str(tmp_path))
