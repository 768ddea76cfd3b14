"""The data module reading shards instead of folders."""

import os
from pathlib import Path

import pytest
import torch

from effnet_lightning.data import datamodule as datamodule_module
from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.folders import find_classes
from effnet_lightning.data.shards import write_shards


def test_the_data_module_reads_shards_without_listing_a_file(tmp_path, small_root, monkeypatch):
    write_shards(small_root, tmp_path / "shards", workers=2, say=lambda line: None)

    def no_listing(*args, **kwargs):
        raise AssertionError("a shard folder must not be listed file by file")

    monkeypatch.setattr(datamodule_module, "folder_splits", no_listing)
    monkeypatch.setattr(datamodule_module, "find_bad_images", no_listing)
    data = ImageFolderDataModule(root=str(tmp_path / "shards"), image_size=32, batch_size=8, num_workers=2)
    data.setup("fit")
    assert data.class_names == find_classes(small_root / "train")
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [100, 71, 71]
    assert data.class_counts() == [10] * 10
    images, labels = next(iter(data.val_dataloader()))  # in worker processes
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == [0] * 8


def test_shards_at_a_url_are_read_through_litdatas_downloader_and_an_unreadable_url_is_one_line(small_shards):
    """`local:` is litdata's URL for a folder read the way it reads an object store: the info
    file through its downloader, the chunks copied into its cache."""
    by_url = ImageFolderDataModule(root=f"local:{small_shards}", image_size=32, batch_size=8, num_workers=0)
    by_path = ImageFolderDataModule(root=str(small_shards), image_size=32, batch_size=8, num_workers=0)
    for data in (by_url, by_path):
        data.setup("fit")
    assert by_url.class_names == by_path.class_names and by_url.class_counts() == by_path.class_counts()
    url_images, url_labels = next(iter(by_url.val_dataloader()))
    path_images, path_labels = next(iter(by_path.val_dataloader()))
    assert torch.equal(url_images, path_images) and torch.equal(url_labels, path_labels)
    assert list(Path(os.environ["LITDATA_CACHE_DIR"]).rglob("chunk-*.bin"))  # the chunks went through the cache

    with pytest.raises(FileNotFoundError) as refused:
        ImageFolderDataModule(root="local:/nowhere/shards")
    message = str(refused.value)
    assert message.startswith("cannot read local:/nowhere/shards/effnet_shards.json (") and "\n" not in message
    assert message.endswith("check the URL, the network and the store's credentials, or give a local shard folder")
