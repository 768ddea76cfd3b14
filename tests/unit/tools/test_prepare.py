"""prepare: an interrupted run continues where it stopped."""

import pytest

from effnet_lightning.data.shards import SHARDS_INFO, write_shards
from tests.helpers.fault_doc import expect
from tests.helpers.shards import shard_contents


def test_an_interrupted_prepare_continues_where_it_stopped_and_keeps_the_finished_split(tmp_path, small_root):
    def stop_before_val(line):
        if line.startswith("writing") and "val" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(small_root, tmp_path / "shards", workers=2, say=stop_before_val)
    assert not (tmp_path / "shards" / SHARDS_INFO).exists()
    train_chunks = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards" / "train").iterdir()}
    lines = []
    write_shards(small_root, tmp_path / "shards", workers=2, say=lines.append)
    assert lines[0] == f"continuing the unfinished prepare in {tmp_path / 'shards'}"
    assert not any("train" in line for line in lines)  # the finished split is kept, not written again
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards" / "train").iterdir()} == train_chunks

    write_shards(small_root, tmp_path / "whole", workers=2, say=lambda line: None)
    assert shard_contents(tmp_path / "shards") == shard_contents(tmp_path / "whole")
    expect("prepare-interrupted", "continuing the unfinished prepare in", "the finished split is kept")
