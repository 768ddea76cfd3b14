"""Files written so that a crash leaves the old file or the new one, never half of one: the
trainer's checkpoint plugin and the run record use it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, flushes it to disk, then
    renames it over the target: a crash or a full disk mid-write leaves the previous file
    (e.g. `last.ckpt`) whole and loadable."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f), binary=True)


def write_atomically(path: Path, write, binary: bool = False) -> None:
    """Call write(file) on a temporary file next to `path`, flush it to disk, then move it into
    place: readers see the old content or the new one, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # the rename itself survives a power cut once the folder is flushed
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system flushes folders
