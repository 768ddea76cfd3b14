"""The image-folder data module: splits, crops and normalisation, bad files, empty classes."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from effnet_lightning.data import datamodule
from effnet_lightning.data.datamodule import (
    BadImageError,
    ImageFolderDataModule,
    check_same_listing,
    eval_transform,
    load_rgb,
)
from effnet_lightning.data.folders import list_images, stratified_split
from effnet_lightning.models.preprocessing import Preprocessing
from tests.helpers.fault_doc import expect


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
    path, _label = dm.splits["val"][0]
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


def test_odd_image_modes_load_as_8_bit_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (200, 10, 10, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: shows the white background
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black on white
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.new("L", (2, 2), 77).save(tmp_path / "gray.png")
    Image.new("LA", (2, 2), (77, 0)).save(tmp_path / "gray_alpha.png")
    Image.new("I;16", (2, 2), 65535 // 2).save(tmp_path / "deep.png")  # 16-bit grayscale
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    loaded = {p.stem: load_rgb(str(p)) for p in tmp_path.iterdir()}
    assert {name: img.mode for name, img in loaded.items()} == dict.fromkeys(loaded, "RGB")
    assert loaded["rgba"].getpixel((0, 0)) == (255, 255, 255)
    assert loaded["rgba"].getpixel((1, 0)) == pytest.approx((127, 127, 127), abs=1)
    assert loaded["rgba"].getpixel((2, 0)) == (200, 10, 10)
    assert loaded["palette"].getpixel((0, 0)) == (255, 255, 255) and loaded["palette"].getpixel((1, 1)) == (10, 200, 30)
    assert loaded["gray"].getpixel((0, 0)) == (77, 77, 77) and loaded["gray_alpha"].getpixel((0, 0)) == (255, 255, 255)
    assert loaded["deep"].getpixel((0, 0)) == (127, 127, 127)  # 32767 of 65535, not clipped to 255
    assert loaded["cmyk"].getpixel((0, 0)) == pytest.approx((255, 0, 0), abs=3)


def test_predict_images_at_any_depth_and_classes_given_by_a_checkpoint(tmp_path):
    make_folder(tmp_path / "labelled")
    unlabelled = tmp_path / "new"
    make_folder(unlabelled, classes=("x", "x/deeper"), per_class=2)
    (unlabelled / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(unlabelled / ".thumbs" / "t.png")
    dm = ImageFolderDataModule(predict_root=str(unlabelled), class_names=["ant", "bee", "cat"], image_size=16)
    assert dm.root is None and dm.num_classes == 3  # no labelled folder needed, none generated
    dm.setup("predict")
    assert [p.removeprefix(str(unlabelled)) for p in dm.predict_paths()] == [
        "/x/0.png",
        "/x/1.png",
        "/x/deeper/0.png",
        "/x/deeper/1.png",
    ]
    images, positions = next(iter(dm.predict_dataloader()))
    assert images.shape == (4, 3, 16, 16) and positions.tolist() == [0, 1, 2, 3]
    with pytest.raises(
        ValueError, match=r"has classes \['ant', 'bee', 'cat'\] but the model was trained on \['a', 'b'\]"
    ):
        ImageFolderDataModule(root=str(tmp_path / "labelled"), class_names=["a", "b"])
    assert ImageFolderDataModule(root=str(tmp_path / "labelled"), class_names=["ant", "bee", "cat"]).num_classes == 3


def test_bad_files_are_skipped_and_listed_odd_modes_load_and_hidden_folders_are_ignored(bad_folder, caplog):
    root, kinds = bad_folder
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, val_fraction=0.25)
    assert dm.class_names == ["ant", "bee", "cat"]  # .cache is hidden: not a class
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    header_bad = {k: v for k, v in kinds.items() if k != "truncated"}  # a truncated file has a good header
    assert {Path(p).name: why for p, why in dm.skipped.items()} == {
        "empty.jpg": "empty file",
        "text.png": "not an image PIL can read",
        "dangling.jpg": dm.skipped[str(root / "ant" / "dangling.jpg")],
        **({"locked.png": dm.skipped.get(str(root / "ant" / "locked.png"))} if "unreadable" in kinds else {}),
    }
    assert "FileNotFoundError" in dm.skipped[str(root / "ant" / "dangling.jpg")]
    n_listed = 3 * 6 + 5 + len(header_bad)  # good, odd modes + truncated, bad
    assert f"skipping {len(header_bad)} of {n_listed} files that are not readable images" in caplog.text
    listed = {Path(p).name for split in ("train", "val") for p, _ in dm.splits[split]}
    assert listed.isdisjoint({".thumb.png", "skip.png", "notes.txt", *header_bad.values()})
    assert {"cmyk.jpg", "rgba.png", "deep.png", "gray.png", "truncated.jpg"} <= listed
    assert sum(dm.class_counts()) + len(dm.splits["val"]) == n_listed - len(header_bad)
    # every sample loads as a 3-channel tensor; the truncated JPEG is replaced by the next image
    dataset = dm.train_dataloader().dataset
    dataset.samples = dataset.samples + dm.splits["val"]
    with caplog.at_level("WARNING"):
        images = [dataset[i][0] for i in range(len(dataset))]
    assert {tuple(x.shape) for x in images} == {(3, 32, 32)}
    assert [Path(p).name for p in dataset.failed] == ["truncated.jpg"]
    assert "skipping unreadable image" in caplog.text and "truncated.jpg" in caplog.text


def test_strict_mode_stops_at_bad_files(bad_folder):
    root, _ = bad_folder
    dm = ImageFolderDataModule(root=str(root), strict=True)
    with pytest.raises(
        BadImageError, match=r"files are not readable images, e\.g\. .*dangling\.jpg .*drop --data\.strict"
    ):
        dm.setup("fit")
    for name in ("empty.jpg", "text.png", "dangling.jpg", "locked.png"):
        (root / "ant" / name).unlink(missing_ok=True)
    dm = ImageFolderDataModule(root=str(root), strict=True, image_size=32, val_fraction=0.25)
    dm.setup("fit")  # the truncated JPEG only fails when decoded
    dataset = dm.train_dataloader().dataset
    index = [Path(p).name for p, _ in dataset.samples + dm.splits["val"]].index("truncated.jpg")
    dataset.samples = dataset.samples + dm.splits["val"]
    with pytest.raises(BadImageError, match=r"cannot load .*truncated\.jpg \(OSError: image file is truncated"):
        dataset[index]


def test_an_empty_class_folder_is_an_error_unless_allowed(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "dog").mkdir()
    with pytest.raises(
        ValueError,
        match=r"class folder\(s\) \['dog'\] under .* have no training images: .*"
        r"--data.allow_empty_classes true",
    ):
        ImageFolderDataModule(root=str(tmp_path)).setup("fit")
    dm = ImageFolderDataModule(root=str(tmp_path), allow_empty_classes=True)
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.class_counts() == [8, 8, 8, 0]
    expect(
        "data-empty-class",
        "class folder(s) ['dog'] under <data> have no training images",
        "--data.allow_empty_classes true",
    )


def test_processes_that_see_other_files_are_refused():
    check_same_listing(["a1b2", "a1b2"])
    with pytest.raises(ValueError, match=r"processes \[1\] see other files or classes than process 0"):
        check_same_listing(["a1b2", "ffff"])
    expect("ddp-same-listing", "processes [1] see other files or classes than process 0")


def test_a_small_folder_cropped_as_imagenet_is_pointed_to_the_small_data_recipes(
    small_root, demo_root, tmp_path, monkeypatch, caplog
):
    (tmp_path / "data").symlink_to(demo_root.parent)  # the demo data where a bare fit looks for it
    monkeypatch.chdir(tmp_path)
    hint = "--config configs/scratch.yaml holds settings measured on small sets"
    with caplog.at_level("INFO"):
        ImageFolderDataModule(root=str(small_root), image_size=64).setup("fit")
    assert (
        f"100 training images of about 96 px, cropped as ImageNet's are (8-100% of each image): from scratch, {hint}"
        in caplog.text
    )
    assert "from pretrained weights, --config configs/finetune.yaml" in caplog.text
    for quiet in (
        {"root": str(small_root), "crop_scale": (0.6, 1.0)},  # a recipe's crops, or the user's own
        {"root": None},  # the demo data: its own settings apply
    ):
        caplog.clear()
        with caplog.at_level("INFO"):
            ImageFolderDataModule(image_size=64, **quiet).setup("fit")
        assert hint not in caplog.text
    # many images: only small ones get the hint (thresholds lowered to this folder's 100 of 96 px)
    monkeypatch.setattr(datamodule, "SMALL_DATA_IMAGES", 50)
    for side, hinted in ((64, False), (96, True)):
        monkeypatch.setattr(datamodule, "SMALL_IMAGE_SIDE", side)
        caplog.clear()
        with caplog.at_level("INFO"):
            ImageFolderDataModule(root=str(small_root), image_size=64).setup("fit")
        assert (hint in caplog.text) == hinted


def test_unlabelled_images_come_beside_every_training_batch_each_once_before_any_repeats(tmp_path):
    make_folder(tmp_path / "labelled", per_class=10)  # 24 training images after the split
    unlabelled = tmp_path / "unlabelled" / "deeper"
    unlabelled.mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 25, 0, 0)).save(unlabelled / f"u{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path / "labelled"), batch_size=4, num_workers=0, image_size=32)
    dm.setup("fit")
    dm.add_unlabelled_images(str(tmp_path / "unlabelled"), share=1 / 3)
    assert dm.unlabelled_batch_size == 2  # a third of each batch of 4 + 2
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    assert all(len(b) == 3 and b[0].shape == (4, 3, 32, 32) and b[2].shape == (2, 3, 32, 32) for b in batches)
    # the 12 unlabelled images of an epoch: the first ten are all ten images, by their red channel
    reds = [round(float(img[0].mean() * 0.229 + 0.485) * 255 / 25) for b in batches for img in b[2]]
    assert sorted(reds[:10]) == list(range(10))
    # a position saved mid-epoch gives the batches that follow
    again = ImageFolderDataModule(root=str(tmp_path / "labelled"), batch_size=4, num_workers=0, image_size=32)
    again.setup("fit")
    again.add_unlabelled_images(str(tmp_path / "unlabelled"), share=1 / 3)
    first = again.train_dataloader()
    stream = iter(first)
    next(stream), next(stream)
    position = first.state_dict()
    resumed = ImageFolderDataModule(root=str(tmp_path / "labelled"), batch_size=4, num_workers=0, image_size=32)
    resumed.setup("fit")
    resumed.add_unlabelled_images(str(tmp_path / "unlabelled"), share=1 / 3)
    resumed.load_state_dict({"epoch": 0, "train_loader": position})
    rest = list(resumed.train_dataloader())
    assert len(rest) == 4
    for got, want in zip(rest, batches[2:]):
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(
        FileNotFoundError, match="--distill.extra_root .*missing is not a folder: give a folder of images"
    ):
        dm.add_unlabelled_images(str(tmp_path / "labelled" / "missing"), share=0.5)
