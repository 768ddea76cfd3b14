"""Image folders: listing classes and images, the seeded train/val split, finding files that
are not readable images, and the dataset that reads them (skipping a file that fails to decode)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, DistributedSampler, Sampler

from effnet_lightning.data.decode import EncodedImage, load_rgb, open_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Loading tries this many samples in a row before giving up on a batch.
LOAD_ATTEMPTS = 10


def find_classes(folder: Path) -> list[str]:
    """Class folders, sorted; hidden folders are not classes."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_classes(root: Path) -> list[str]:
    """The classes of an image folder: the class folders under root/train/ when there is one,
    else under root; an error naming the expected layout when there are none."""
    train_dir = root / "train"
    classes = find_classes(train_dir if train_dir.is_dir() else root)
    if not classes:
        raise FileNotFoundError(f"no class folders in {root}: expected {root}/<class>/<images>")
    return classes


def list_images(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image under folder/<class>/, in a fixed order."""
    samples = []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        samples += [(path, index) for path in list_all_images(class_dir)]
    return samples


def stratified_split(samples: list[tuple[str, int | tuple[int, ...]]], val_fraction: float, seed: int):
    """Deterministic per-class split: the same seed gives the same split on every rank. A
    multi-label sample (its label a tuple of classes) goes with its first class."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1] if isinstance(s[1], int) else s[1][0], []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        random.Random(seed + label).shuffle(items)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return sorted(train), sorted(val)


def sample_labels(samples) -> list[int]:
    """The labels of (image, label) samples, without reading the images when the samples know
    them (`ShardSamples.labels`)."""
    labels = getattr(samples, "labels", None)
    return labels if labels is not None else [label for _, label in samples]


def folder_splits(
    root: Path, classes: list[str], val_fraction: float, seed: int, readable: Callable[[list], list] = list
) -> dict[str, list[tuple[str, int]]]:
    """The train, val and test samples of an image folder: its train/ and val/ (and test/)
    folders, or one folder of class folders split by `stratified_split`. Without test/, test is
    the val list itself. `readable` filters each listing (e.g. to the files that read as images)
    before it is split."""
    train_dir = root / "train"
    if train_dir.is_dir():
        val_dir = root / "val"
        if not val_dir.is_dir():
            raise FileNotFoundError(f"{root} has train/ but no val/: add {val_dir} with the same classes")
        splits = {"train": readable(list_images(train_dir, classes)), "val": readable(list_images(val_dir, classes))}
    else:
        train, val = stratified_split(readable(list_images(root, classes)), val_fraction, seed)
        splits = {"train": train, "val": val}
    test_dir = root / "test"
    splits["test"] = readable(list_images(test_dir, classes)) if test_dir.is_dir() else splits["val"]
    return splits


def list_all_images(folder: Path) -> list[str]:
    """Every image under folder, at any depth, sorted; hidden files and folders are skipped.
    (Dangling links are listed, so the check of the files reports them.)"""
    return [
        str(p)
        for p in sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.is_dir()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    ]


class BadImageError(ValueError):
    """An image file that cannot be read; the message names the file and what to do."""


def image_problem(path: str) -> str | None:
    """Why `path` is not a readable image, from its header (None: it looks fine). Truncated
    files pass here and are caught when loaded."""
    try:
        with Image.open(path) as img:
            width, height = img.size
        return None if width > 0 and height > 0 else "empty image"
    except UnidentifiedImageError:
        return "not an image PIL can read" if Path(path).stat().st_size else "empty file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"


def image_size(path: str | EncodedImage) -> tuple[int, int]:
    """(width, height) from the file's header; (0, 0) when it is not a readable image."""
    try:
        with open_image(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return (0, 0)


def find_bad_images(paths: list[str], workers: int = 8) -> dict[str, str]:
    """{path: problem} for the files among `paths` whose headers do not read as an image
    (threads: the check waits on the disk, not the CPU)."""
    with ThreadPoolExecutor(workers) as pool:
        return {path: problem for path, problem in zip(paths, pool.map(image_problem, paths)) if problem}


class SeededOrder(Sampler):
    """The training order as a function of (seed, epoch) alone: a permutation of `n` indices
    drawn from a generator seeded by both, each index paired with the seed of its sample's
    augmentation. Resuming, or rebuilding the loader at a stage change, replays exactly the
    order and the augmentation an uninterrupted run would have had. `epoch_of` says which
    epoch is about to run (asked when iteration starts, so a loader kept across epochs, or
    wrapped for DDP, follows along). With `weights`, `n` draws with replacement in proportion
    to them instead (the weighted sampler), each draw with a seed of its own."""

    def __init__(self, n: int, seed: int, epoch_of: Callable[[], int], weights: list[float] | None = None):
        self.n, self.seed, self.epoch_of = n, seed, epoch_of
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch = self.epoch_of()
        base = (self.seed * 1_000_003 + epoch) * self.n
        generator = torch.Generator().manual_seed(base % 2**63)
        if self.weights is not None:
            draws = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
            return iter([((base + position) % 2**63, i) for position, i in enumerate(draws.tolist())])
        order = torch.randperm(self.n, generator=generator)
        return iter([((base + i) % 2**63, i) for i in order.tolist()])


class CycledOrder(Sampler):
    """`draws` items from seeded permutations of `n` indices, one after another (the images
    without labels that accompany each training batch: as many as the epoch needs, each image
    once before any repeats). Like `SeededOrder`, a function of (seed, epoch) alone, each index
    paired with the seed of its sample's augmentation; drawn from another stream than the
    labelled order's."""

    def __init__(self, n: int, draws: int, seed: int, epoch_of: Callable[[], int]):
        self.n, self.draws, self.seed, self.epoch_of = n, draws, seed, epoch_of

    def __len__(self) -> int:
        return self.draws

    def __iter__(self):
        base = ((self.seed * 1_000_003 + self.epoch_of()) * self.draws + UNLABELLED_STREAM) % 2**63
        generator = torch.Generator().manual_seed(base)
        order: list[int] = []
        while len(order) < self.draws:
            order += torch.randperm(self.n, generator=generator).tolist()
        return iter([((base + position) % 2**63, i) for position, i in enumerate(order[: self.draws])])


UNLABELLED_STREAM = 0x5EED_0F_EB  # keeps the unlabelled images' seeds apart from the labelled order's


class RankShare(DistributedSampler):
    """Under DDP, this process's share of a `SeededOrder`: every num_replicas-th item from its
    rank, the order padded with its own start to divide evenly (DistributedSampler's split,
    over an order that is still a function of (seed, epoch) alone). Being a DistributedSampler,
    its loader is kept as built (Lightning would rebuild one with another sampler for DDP),
    so the position a resumed fit gives that loader is the one it draws from."""

    def __init__(self, order: SeededOrder):
        super().__init__(range(len(order)), shuffle=False)  # replicas and rank: torch.distributed's
        self.order = order

    def __iter__(self):
        items = list(self.order)
        while len(items) < self.total_size:
            items += items[: self.total_size - len(items)]
        return iter(items[self.rank : self.total_size : self.num_replicas])


class ImageFileDataset(Dataset):
    """(path, label) samples (or, from shards, (EncodedImage, label)) -> (transformed image, label).

    `decode` reads a file: `load_rgb` (a PIL image, as the weights' reference evaluation
    reads it) or `decode_rgb` (a uint8 tensor, faster for the training transforms). A file
    that fails to load (e.g. a truncated JPEG, which only decoding finds) is replaced by the next
    sample and named in the log once, so one bad file cannot end a long run; with `strict` it
    raises `BadImageError` instead. With `multi_hot` (the number of classes), a label is a tuple
    of classes (or one class) and the target a float vector with 1 at each.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform,
        strict: bool = False,
        decode=load_rgb,
        with_seed: bool = False,
        multi_hot: int | None = None,
    ):
        self.samples = samples
        self.multi_hot = multi_hot
        self.with_seed = with_seed  # (image, label, seed) for a seeded index: MixCollate seeds the batch by it
        self.transform = transform
        self.strict = strict
        self.decode = decode
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]):
        """`index`, or (seed, index) from `SeededOrder`: then the random transforms draw from a
        generator seeded by it, so a sample's augmentation does not depend on which process
        loads it, or on how often the loader was restarted."""
        if isinstance(index, tuple):
            seed, index = index
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # the CPU generator alone: 20x cheaper than torch.manual_seed
                item = self._load(index)
            return (*item, seed) if self.with_seed else item
        return self._load(index)

    def _target(self, label):
        if self.multi_hot is None:
            return label
        target = torch.zeros(self.multi_hot)
        target[[label] if isinstance(label, int) else list(label)] = 1.0  # (class folders: one class)
        return target

    def _load(self, index: int):
        attempts = min(len(self.samples), LOAD_ATTEMPTS)
        for attempt in range(attempts):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return self.transform(self.decode(path)), self._target(label)
            except (OSError, SyntaxError, ValueError) as e:
                reason = f"{type(e).__name__}: {e}"
                if self.strict:
                    raise BadImageError(
                        f"cannot load {path} ({reason}): remove or replace the file, or drop "
                        f"--data.strict to skip unreadable files"
                    ) from None
                if path not in self.failed:
                    self.failed.add(path)
                    log.warning("skipping unreadable image %s (%s); using the next image instead", path, reason)
        raise BadImageError(
            f"{attempts} images in a row failed to load, the last {path} ({reason}): check the data folder"
        )
