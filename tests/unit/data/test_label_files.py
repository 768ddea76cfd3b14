"""Label files (`data/label_files.py`): both forms, the long format, splits, every bad-row kind
with its line, and the data module that reads them (classes, splits, multi-hot targets)."""

import logging

import pytest
import torch
from PIL import Image

from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.label_files import LabelFileError, read_label_file


def images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 20 % 255, 0, 0)).save(folder / name)


def write(path, text):
    path.write_text(text)
    return path


def test_a_labels_column_in_the_long_format_merges_an_images_labels(tmp_path):
    images(tmp_path, ["a.png", "b.png", "c.png"])
    path = write(tmp_path / "l.csv", "image,labels\na.png,cat\nb.png,dog cat\na.png,dog\nc.png,bird\n")
    table = read_label_file(path)
    assert table.class_names == ["bird", "cat", "dog"] and table.bad_rows == [] and table.multilabel
    assert table.samples(multilabel=True) == {
        None: [(str(tmp_path / "a.png"), (1, 2)), (str(tmp_path / "b.png"), (1, 2)), (str(tmp_path / "c.png"), (0,))]
    }


def test_zero_one_columns_keep_their_order_and_a_split_column_places_images(tmp_path):
    images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    path = write(
        tmp_path / "l.csv", "image,zebra,ant,split\nimg/a.png,1,0,train\nimg/b.png,0,1,val\nimg/c.png,1,0,test\n"
    )
    table = read_label_file(path)
    assert table.class_names == ["zebra", "ant"] and not table.multilabel and table.has_splits
    assert table.samples(multilabel=False) == {
        "train": [(str(tmp_path / "img/a.png"), 0)],
        "val": [(str(tmp_path / "img/b.png"), 1)],
        "test": [(str(tmp_path / "img/c.png"), 0)],
    }


def test_every_bad_row_kind_is_listed_with_its_line_and_no_clean_row_is_dropped(tmp_path):
    images(tmp_path, ["ok1.png", "ok2.png", "dup.png", "nolabel.png", "ok3.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    text = (
        "image,labels,split\n"
        "ok1.png,cat,train\n"  # 2
        "missing.png,cat,train\n"  # 3
        "broken.png,dog,train\n"  # 4
        "nolabel.png,,train\n"  # 5
        ",cat,train\n"  # 6
        "ok2.png,dog,holdout\n"  # 7: a bad split; the image's next row is clean
        "ok2.png,dog,val\n"  # 8
        "dup.png,cat,train\n"  # 9
        "dup.png,dog,val\n"  # 10: another split for the same image
        "ok3.png,cat,val\n"  # 11
    )
    table = read_label_file(write(tmp_path / "l.csv", text))
    assert [(row.line, row.problem.split(":")[-1].strip()) for row in table.bad_rows] == [
        (3, "no such file"),
        (4, "not an image PIL can read"),
        (5, "no label"),
        (6, "no image path"),
        (7, "split 'holdout' is not train, val or test"),
        (10, "split val but line 9 puts it in train"),
    ]
    assert sorted(p.rsplit("/", 1)[1] for p in table.images) == ["dup.png", "ok1.png", "ok2.png", "ok3.png"]


def test_a_single_label_task_refuses_a_second_label_and_a_fixed_class_list_refuses_unknown_ones(tmp_path):
    images(tmp_path, ["a.png", "b.png"])
    text = "image,labels\na.png,cat\nb.png,dog\na.png,dog\nb.png,dog\n"
    table = read_label_file(write(tmp_path / "l.csv", text), single_label=True)
    assert [str(row) for row in table.bad_rows] == [
        "line 2: a single-label image labelled again on lines [2, 4]",
        "line 4: a single-label image labelled again on lines [2, 4]",
    ]
    assert list(table.images) == [str(tmp_path / "b.png")]  # b's repeat agrees: kept
    table = read_label_file(
        write(tmp_path / "m.csv", "image,labels\na.png,cat\nb.png,cow\n"), class_names=["cat", "dog"]
    )
    assert [str(row) for row in table.bad_rows] == ["line 3: unknown label 'cow' (not one of the model's 2 classes)"]
    table = read_label_file(write(tmp_path / "n.csv", "image,cat,dog\na.png,1,0\nb.png,1,yes\n"))
    assert [str(row) for row in table.bad_rows] == ["line 3: column dog holds 'yes', not 0 or 1"]


def test_a_file_without_the_needed_columns_is_refused_in_one_line(tmp_path):
    with pytest.raises(LabelFileError, match=r"has columns path, tags: a label file needs a column `image`"):
        read_label_file(write(tmp_path / "l.csv", "path,tags\na.png,cat\n"))
    with pytest.raises(LabelFileError, match=r"has no labels: add a column `labels`"):
        read_label_file(write(tmp_path / "l.csv", "image,split\na.png,train\n"))
    with pytest.raises(FileNotFoundError, match=r"is not a file: give a CSV with a column `image`$"):
        read_label_file(tmp_path / "none.csv")


def test_the_data_module_reads_a_multi_label_file_into_multi_hot_targets(tmp_path, caplog):
    names = [f"{i}.png" for i in range(10)]
    images(tmp_path / "base", names)
    rows = [f"{n},{'cat dog' if i % 2 else 'bird'}" for i, n in enumerate(names)] + ["gone.png,cat"]
    path = write(tmp_path / "l.csv", "image,labels\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        data = ImageFolderDataModule(root=str(tmp_path / "base"), label_file=str(path), image_size=32, num_workers=0)
    assert "leaving out 1 rows of" in caplog.text and "line 12: " in caplog.text and "no such file" in caplog.text
    assert data.multilabel and data.class_names == ["bird", "cat", "dog"] and data.num_classes == 3
    data.setup("fit")
    assert len(data.splits["train"]) + len(data.splits["val"]) == 10
    assert (
        data.class_counts()
        == [sum(1 for _, t in data.splits["train"] if 0 in t)] + [sum(1 for _, t in data.splits["train"] if 1 in t)] * 2
    )
    _, targets = next(iter(data.train_dataloader()))
    assert targets.dtype == torch.float32 and targets.shape[1] == 3
    assert set(map(tuple, targets.tolist())) <= {(1.0, 0.0, 0.0), (0.0, 1.0, 1.0)}


def test_the_data_module_refuses_bad_rows_under_strict_and_the_weighted_sampler_for_multi_label(tmp_path):
    images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    path = write(tmp_path / "l.csv", "image,labels\na.png,x\nb.png,x y\nc.png,y\nd.png,x\nmissing.png,x\n")
    with pytest.raises(ValueError, match=r"^1 rows of .* cannot be used, e.g. line 6: .*no such file: mend them"):
        ImageFolderDataModule(label_file=str(path), strict=True)
    data = ImageFolderDataModule(label_file=str(path), weighted_sampler=True, image_size=32)
    with pytest.raises(ValueError, match=r"^--data.weighted_sampler draws images by their one class"):
        data.setup("fit")
    forced = ImageFolderDataModule(label_file=str(path), task="multiclass", image_size=32)
    assert not forced.multilabel
    assert [str(row).split(": ")[0:2] for row in forced.label_table.bad_rows] == [
        ["line 3", "2 labels (x y) for a single-label task"],
        ["line 6", str(tmp_path / "missing.png")],
    ]


def test_a_multi_label_task_on_class_folders_gives_one_hot_targets(tmp_path):
    for name in ("cat", "dog"):
        images(tmp_path / name, [f"{i}.png" for i in range(5)])
    data = ImageFolderDataModule(root=str(tmp_path), task="multilabel", image_size=32, num_workers=0, batch_size=4)
    data.setup("fit")
    _, targets = next(iter(data.train_dataloader()))
    assert data.multilabel and targets.shape == (4, 2) and targets.sum(1).tolist() == [1.0] * 4
