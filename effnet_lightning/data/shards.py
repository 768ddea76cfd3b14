"""Shards: an image folder converted once into litdata's chunks, and read back by index.

    python cli.py prepare --data.root ~/images --output_dir ~/images-shards
    python cli.py prepare --data.label_file ~/images/labels.csv --output_dir ~/images-shards
    python cli.py fit --data.root ~/images-shards

    SHARDS/effnet_shards.json   class names; per split, the labels in the folder's order (a
                                multi-label set: each image's list of classes)
    SHARDS/train/, val/, test/  litdata chunks: per image, the file's original encoded bytes,
                                its label, its position in the folder's listing and its name
    SHARDS/bad_files.txt        the folder's files that are not readable images, and why (a
                                label file's rows that cannot be used: FILE:LINE and why)

`write_shards` lists and splits the folder as training from it does (train/val/test folders,
or the seeded stratified split), decodes every file once, in parallel (so truncated files are
found too), and writes the readable ones with litdata's `optimize`. Interrupted, the same
command continues: the listing and finished splits are kept, and litdata resumes the split it
was writing from its own checkpoints.

`ShardSamples` is one split as a sequence of (EncodedImage, label) in the folder's order, read
by random access (litdata's `StreamingDataset`). The data module uses it where a folder gives
(path, label) pairs: the same seeded order, decoding, transforms, resume and DDP sampling, so
training from shards is training from the folder, minus listing and checking files at start-up.
A shard folder copied to an object store is read from its URL (`s3://`, `gs://`, `azure://`,
`hf://`; `local:/path` reads a folder the same way), litdata downloading the chunks into its
cache as they are needed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from effnet_lightning.data.decode import EncodedImage, load_rgb
from effnet_lightning.data.folders import folder_classes, folder_splits, image_problem, stratified_split
from effnet_lightning.data.label_files import read_label_file
from effnet_lightning.stop_signals import leave_stop_signals_to_parent

SHARDS_INFO = "effnet_shards.json"
LISTING = "listing.json"  # an unfinished prepare's listing and checks, so that running it again continues
FORMAT = 1
URL_PREFIXES = ("s3://", "gs://", "r2://", "azure://", "hf://", "local:")  # what litdata reads as a remote folder


def is_shard_url(root: str | Path) -> bool:
    return isinstance(root, str) and root.startswith(URL_PREFIXES)


def is_shard_folder(root: str | Path) -> bool:
    return is_shard_url(root) or (Path(root) / SHARDS_INFO).is_file()


class ShardSamples(Sequence):
    """One split of a shard folder: `samples[i]` is (EncodedImage, label) of the folder's i-th
    image (a multi-label image's label: the tuple of its classes). `labels` are at hand without
    reading an image. Each process opens its own reader."""

    def __init__(self, folder: str | Path, labels: list[int], order: list[int] | None = None):
        self.folder, self.labels, self.order = folder, labels, order
        self._reader, self._pid = None, None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        if self._pid != os.getpid():  # a worker process, or the first read
            from litdata import StreamingDataset

            # One item a read: litdata's default decodes a window of items around each read, which
            # random access throws away (10x slower per image here).
            self._reader, self._pid = StreamingDataset(str(self.folder), batch_decode=False), os.getpid()
        item = self._reader[self.order[index] if self.order else index]
        label = self.labels[index]
        return EncodedImage(item["name"], bytes(item["image"])), label if isinstance(label, int) else tuple(label)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_pid": None}

    def __repr__(self) -> str:
        digest = hashlib.sha1(repr(self.labels).encode()).hexdigest()[:12]
        return f"ShardSamples({self.folder}, {len(self)} images, labels {digest})"


@dataclass
class Shards:
    root: Path | str  # a folder, or an object-store URL
    class_names: list[str]
    splits: dict[str, Sequence]  # train, val, test (val's own samples when the folder had no test/)
    bad_files: dict[str, str]
    multilabel: bool = False  # from a label file that gives some image several labels


def open_shards(root: str | Path) -> Shards:
    """The shard folder (or URL) `root` written by `write_shards`, its info file and splits checked."""
    remote = is_shard_url(root)
    info = json.loads(_read_remote_info(root) if remote else (Path(root) / SHARDS_INFO).read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{root} holds shards of format {info.get('format')}, not {FORMAT}: run prepare again")
    splits = {}
    for split, saved in info["splits"].items():
        folder = f"{root.rstrip('/')}/{split}" if remote else Path(root) / split
        if saved["labels"] and not remote and not (folder / "index.json").is_file():
            raise FileNotFoundError(f"{folder} has no index.json: run the prepare that wrote {root} again")
        splits[split] = ShardSamples(folder, saved["labels"], saved.get("order"))
    splits.setdefault("test", splits["val"])
    return Shards(root, info["class_names"], splits, info.get("bad_files", {}), info.get("multilabel", False))


def _read_remote_info(url: str) -> str:
    """The info file of the shards at `url`, through litdata's downloader for that store."""
    from litdata.streaming.downloader import get_downloader

    with tempfile.TemporaryDirectory() as cache:
        local = Path(cache) / SHARDS_INFO
        try:
            get_downloader(url, cache, []).download_file(f"{url.rstrip('/')}/{SHARDS_INFO}", str(local))
            return local.read_text()
        except Exception as e:  # each store's client raises its own errors: all mean "not readable"
            raise FileNotFoundError(
                f"cannot read {url.rstrip('/')}/{SHARDS_INFO} ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                f"check the URL, the network and the store's credentials, or give a local shard folder"
            ) from None


def decode_problem(path: str) -> str | None:
    """Why `path` is not a readable image (None: it decodes), from its header and then from
    decoding all of it (which finds truncated files too)."""
    problem = image_problem(path)
    if problem:
        return problem
    try:
        load_rgb(path)
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"


def _shard_item(entry: tuple[int, str, str, int | list[int]]) -> dict:
    position, path, name, label = entry
    # The info file has the labels; a multi-label image's chunk keeps its first class.
    first = label if isinstance(label, int) else label[0]
    return {"position": position, "label": first, "name": name, "image": Path(path).read_bytes()}


def write_shards(
    root: str | Path,
    output_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 42,
    workers: int | None = None,
    chunk_bytes: str = "64MB",
    say: Callable[[str], None] = print,
    label_file: str | Path | None = None,
) -> Shards:
    """Convert the image folder `root` into shards in `output_dir` (see the module's notes);
    `workers` processes check and write (default: one per CPU core). With `label_file`, its
    images and labels (`root`: the folder its paths start in; None: the file's folder)."""
    label_file = Path(label_file).expanduser() if label_file else None
    if root is None and label_file is not None:
        root = label_file.parent
    root, out = Path(root).expanduser(), Path(output_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data.root {root} is not a folder: give a folder of class folders")
    if is_shard_folder(root):
        raise ValueError(f"--data.root {root} already holds shards: train from it with --data.root {root}")
    if is_shard_folder(out):
        raise FileExistsError(f"{out} already holds shards: give another --output_dir, or delete {out} first")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"--output_dir {out} is inside --data.root {root}: give a folder outside it")
    workers = workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    listing = _checked_listing(root, out, val_fraction, seed, workers, say, label_file)
    info = {"format": FORMAT, "source": str(root.resolve()), "class_names": listing["class_names"], "splits": {}}
    info["multilabel"] = listing.get("multilabel", False)
    for split, samples in listing["splits"].items():
        info["splits"][split] = _write_split(root, out / split, samples, workers, chunk_bytes, say)
    info["bad_files"] = listing["bad_files"]
    (out / "bad_files.txt").write_text("".join(f"{path}\t{why}\n" for path, why in listing["bad_files"].items()))
    partial = out / f".{SHARDS_INFO}.partial"
    partial.write_text(json.dumps(info))
    partial.replace(out / SHARDS_INFO)  # the shards are complete once this file is there
    (out / LISTING).unlink()
    return open_shards(out)


def _checked_listing(
    root: Path, out: Path, val_fraction: float, seed: int, workers: int, say, label_file: Path | None = None
) -> dict:
    """The folder's (or label file's) classes and splits, its unreadable files left out and
    listed; kept in `out` until the shards are complete, so an interrupted prepare does not
    check again."""
    settings = {"source": str(root.resolve()), "val_fraction": val_fraction, "seed": seed}
    if label_file is not None:
        settings["label_file"] = str(label_file.resolve())
    saved = out / LISTING
    if saved.is_file():
        listing = json.loads(saved.read_text())
        if {k: listing.get(k) for k in settings} != settings:
            raise FileExistsError(
                f"{out} holds an unfinished prepare of {listing['source']} (val_fraction {listing['val_fraction']}, "
                f"seed {listing['seed']}): run that command again to finish it, or delete {out}"
            )
        say(f"continuing the unfinished prepare in {out}")
        return listing
    bad: dict[str, str] = {}

    def readable(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        paths = [path for path, _ in samples]
        with multiprocessing.get_context().Pool(workers, leave_stop_signals_to_parent) as pool:
            problems = pool.map(decode_problem, paths, chunksize=max(1, min(256, len(paths) // (4 * workers) or 1)))
        bad.update({path: problem for path, problem in zip(paths, problems) if problem})
        return [sample for sample, problem in zip(samples, problems) if not problem]

    if label_file is not None:
        classes, multilabel, splits = _label_file_splits(label_file, root, val_fraction, seed, readable, bad)
    else:
        classes, multilabel = folder_classes(root), False
        splits = folder_splits(root, classes, val_fraction, seed, readable=readable)
    if splits["test"] is splits["val"]:
        del splits["test"]  # no test/ folder: test is val, as for the folder
    for split in ("train", "val"):
        if not splits[split]:
            raise FileNotFoundError(f"no readable images for {split} under {root}")
    say(
        f"{root}: {len(classes)} classes, "
        + ", ".join(f"{split} {len(samples)}" for split, samples in splits.items())
        + f" images, {len(bad)} unreadable files left out"
    )
    listing = {**settings, "class_names": classes, "multilabel": multilabel, "splits": splits, "bad_files": bad}
    saved.write_text(json.dumps(listing))
    return listing


def _label_file_splits(label_file: Path, root: Path, val_fraction: float, seed: int, readable, bad: dict):
    """A label file's classes, whether it is multi-label, and its readable samples per split
    (by its split column, or split as fit splits it); its unusable rows go into `bad`."""
    table = read_label_file(label_file, root, check_files=False)  # the files are decoded below
    bad.update({f"{label_file}:{row.line}": row.problem for row in table.bad_rows})
    samples = table.samples(table.multilabel)
    if table.has_splits:
        splits = {"train": readable(samples.get("train", [])), "val": readable(samples.get("val", []))}
    else:
        splits = dict(zip(("train", "val"), stratified_split(readable(samples.get(None, [])), val_fraction, seed)))
    splits["test"] = readable(samples["test"]) if samples.get("test") else splits["val"]
    return table.class_names, table.multilabel, splits


def _write_split(root: Path, folder: Path, samples: list, workers: int, chunk_bytes: str, say) -> dict:
    """One split's chunks (resumed by litdata when an earlier run stopped part-way), read back
    whole: every image of the listing once. Returns the labels and, unless the chunks keep the
    listing's order, where each image is."""
    labels = [label for _, label in samples]
    if not samples:
        return {"labels": []}
    if not (folder / "index.json").is_file():
        from litdata import optimize

        say(f"writing {len(samples)} {folder.name} images to {folder}")
        entries = [(i, path, _name(path, root), label) for i, (path, label) in enumerate(samples)]
        optimize(
            fn=_shard_item,
            inputs=entries,
            output_dir=str(folder),
            chunk_bytes=chunk_bytes,
            num_workers=min(workers, len(entries)),
            use_checkpoint=True,  # an interrupted run is continued where it stopped
            reorder_files=False,
            # litdata sets the start method for the whole process; this keeps the one in use.
            start_method=multiprocessing.get_start_method(),
            verbose=False,
        )
    from litdata import StreamingDataset

    reader = StreamingDataset(str(folder))
    positions = [int(reader[i]["position"]) for i in range(len(reader))]
    if sorted(positions) != list(range(len(samples))):
        raise ValueError(
            f"{folder} holds {len(positions)} images, not the {len(samples)} listed: delete it and run again"
        )
    if positions == list(range(len(samples))):
        return {"labels": labels}
    order = [0] * len(samples)
    for index, position in enumerate(positions):
        order[position] = index
    return {"labels": labels, "order": order}


def _name(path: str, root: Path) -> str:
    """An image's name in the shards: its path under root (a label file's image elsewhere: as given)."""
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
