"""Reading a shard folder back in the tests."""

from pathlib import Path

from effnet_lightning.data.shards import open_shards


def shard_contents(root: Path) -> dict[str, list[tuple[str, int, bytes]]]:
    """{split: [(file name, label, encoded bytes)]} of a shard folder, in order."""
    shards = open_shards(root)
    return {
        split: [(str(image), label, image.data) for image, label in samples] for split, samples in shards.splits.items()
    }
