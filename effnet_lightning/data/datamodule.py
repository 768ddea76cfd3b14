"""The LightningDataModule for image folders, with resolution-aware transforms.

    root/train/<class>/*.jpg, root/val/<class>/*.jpg [, root/test/<class>/*.jpg]
or  root/<class>/*.jpg                      (split into train/val: seeded, stratified)
or  a shard folder written by `prepare`     (the same splits, read from litdata chunks)
or  a label file, FILE.csv                  (image,labels[,split]: `label_files`; multi-label too)
and predict_root/**/*.jpg                   (any layout: every image once, for `predict`)

With no root, the built-in demo dataset (`demo`) is generated on first use.
Grayscale, palette, RGBA (composited on white) and 16-bit images load as RGB. Files that are
not readable images (empty, truncated, another format under an image extension) are skipped
and listed in the log, or stop the run with `strict`.
The crop size follows the model variant (b3 -> 300) unless `image_size` overrides it; the
evaluation crop is `eval_image_size` (by default the training size), resized first to
size / crop fraction as the weights were evaluated; interpolation and normalisation follow the
weights in use. Progressive learning (`stages`) grows the training size and regularisation over
the run; the data module asks the progressive plan for each epoch's settings.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from effnet_lightning.compat import completed_batches
from effnet_lightning.contracts import Task
from effnet_lightning.data import demo
from effnet_lightning.data.decode import decode_rgb, load_rgb
from effnet_lightning.data.folders import (
    BadImageError,
    CycledOrder,
    ImageFileDataset,
    RankShare,
    SeededOrder,
    find_bad_images,
    folder_classes,
    folder_splits,
    image_size,
    list_all_images,
    sample_labels,
    stratified_split,
)
from effnet_lightning.data.label_files import LabelTable, read_label_file
from effnet_lightning.data.shards import Shards, is_shard_folder, is_shard_url, open_shards
from effnet_lightning.data.stages import Stage
from effnet_lightning.data.transforms import Augment, MixCollate, eval_transform, train_transform
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.stop_signals import LeavingStopSignals

log = logging.getLogger(__name__)

DEMO_ROOT = "data/demo"
# Bad files named in the log; the rest are counted (`ImageFolderDataModule.skipped` has all).
LISTED_BAD_FILES = 20
# Below this many training images, or at most this many pixels on the short side, ImageNet's
# crops (8-100% of an image) are pointed to the small-data recipes: configs/scratch.yaml,
# configs/finetune.yaml.
SMALL_DATA_IMAGES = 5000
SMALL_IMAGE_SIDE = 128
IMAGENET_CROP_SCALE = (0.08, 1.0)


class ImageFolderDataModule(L.LightningDataModule):
    """Image folders in, normalised batches out.

    Args:
        root: folder with train/ and val/ (optional test/), or one folder of class folders,
            or a shard folder that `python cli.py prepare` wrote from one (no files are listed
            or checked at start-up: prepare did that once), also as an object-store URL
            (s3://bucket/shards, gs://, azure://, hf://).
            None: the built-in demo dataset, generated into data/demo on first use (predict
            and export with a checkpoint need no labelled folder). With `label_file`: only the
            folder the file's image paths are relative to.
        label_file: a CSV naming each image's labels instead of class folders (`image`, then
            `labels` or one 0/1 column per class, optionally `split`; see `data/label_files.py`).
            Rows that cannot be used are listed with their line numbers and left out (with
            `strict`, they stop the run).
        task: "multilabel" gives multi-hot targets, "multiclass" one class per image (an image
            labelled twice is then a bad row); "auto" follows the data. The CLI sets it from
            --model.task.
        image_size: training crop size; None follows the model (b0 224, b3 300, ...).
        eval_image_size: evaluation crop size (validate, test, predict; `val/acc` is measured
            at it), resized first to size / the weights' crop fraction. None: `image_size`
            when given, else what the weights or the variant evaluate at.
        extra_eval_sizes: more evaluation sizes validated in the same run, logged as
            `val/acc@<size>`.
        batch_size: per device: the global batch is batch_size x devices x nodes.
        num_workers: loader processes per device.
        val_fraction: share of each class held out for validation when root has no val/.
        seed: for that split.
        augment: extra training augmentation: none, autoaugment, randaugment or
            trivialaugment.
        randaugment_magnitude: RandAugment's magnitude (0-30; with `stages`, the last stage's).
        random_erasing: probability of erasing a random rectangle of a training image.
        mixup_alpha, cutmix_alpha: MixUp / CutMix of training batches (0: off; both on: one
            of the two per batch). Targets become class probabilities; the loss takes them.
        crop_scale: area range of the training random-resized crop (ImageNet: 0.08-1; raise
            the lower end when objects are small or the data set is tiny).
        weighted_sampler: draw training images with probability 1 / (images in their class),
            so every class is seen equally often (for imbalanced data).
        predict_root: folder of images for `predict`, read at any depth.
        strict: stop at the first file that is not a readable image instead of skipping it.
        check_files: read every file's header at setup, so bad files are listed before
            training (about 9,000 files/s on a 2-core machine with the files cached); off,
            they are skipped when loading reaches them.
        allow_empty_classes: keep class folders without images as classes (a classifier
            output that never trains); otherwise they are an error.
        class_names: the classes, in order. None: the class folders under root. The CLI sets
            them from a checkpoint, so a folder with other classes is refused rather than
            mislabelled.
        preprocessing: resize / crop / normalisation of the weights in use; the CLI fills it
            in from the model's variant and weights.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int | None = None,
        eval_image_size: int | None = None,
        extra_eval_sizes: list[int] | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        val_fraction: float = 0.2,
        seed: int = 42,
        augment: Augment = "none",
        randaugment_magnitude: int = 9,
        crop_scale: tuple[float, float] = IMAGENET_CROP_SCALE,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        weighted_sampler: bool = False,
        predict_root: str | None = None,
        strict: bool = False,
        check_files: bool = True,
        allow_empty_classes: bool = False,
        class_names: list[str] | None = None,
        preprocessing: dict | None = None,
        label_file: str | None = None,
        task: Task = "auto",
    ):
        super().__init__()
        check_sizes(batch_size, image_size, eval_image_size, extra_eval_sizes)
        check_augmentation(randaugment_magnitude, crop_scale, random_erasing, mixup_alpha, cutmix_alpha)
        # The preprocessing and class names are logged once, by the model.
        self.save_hyperparameters(ignore=["preprocessing", "class_names"])
        # Recorded absolute, so a command run from another folder finds the fit's data.
        self.hparams["root"] = recorded_root(root)
        self.hparams["label_file"] = recorded_root(label_file)
        sizes = resolve_sizes(preprocessing, image_size, eval_image_size, extra_eval_sizes)
        self.train_size = sizes.train
        self.preprocessing = sizes.evaluation  # the evaluation's: its crop is the evaluation size
        self.extra_eval_sizes = list(sizes.extra_eval)
        # Progressive learning: epoch -> that epoch's training settings (set by the `stages` callback).
        self.stage_at: Callable[[int], Stage] | None = None
        self._init_loader_state()
        self._init_sources(root, predict_root, label_file)
        self._init_classes(class_names)

    def _init_loader_state(self) -> None:
        """No loaders yet, and no position in the training data that a checkpoint brings."""
        self._loaders: dict[str, tuple[tuple, DataLoader]] = {}
        self._train_loader: StatefulDataLoader | WithUnlabelled | None = None  # the one training draws from now
        self._train_position: dict | None = None  # a checkpoint's, for the next training loader
        self._resume_epoch = 0  # a checkpoint's next training epoch

    def _init_sources(self, root: str | None, predict_root: str | None, label_file: str | None) -> None:
        """Where the images come from, as given (the labelled root is resolved with the classes),
        and no splits listed yet."""
        self.predict_root = predict_folder(predict_root)
        self.root: Path | str | None = root_location(root)
        self.label_file = Path(label_file).expanduser() if label_file else None
        self.label_table: LabelTable | None = None  # the label file as read, with the classes
        self.multilabel = self.hparams.task == "multilabel"  # with "auto", the label file may say so
        self.shards: Shards | None = None
        self.splits: dict[str, list[tuple[str, int]]] = {}
        self.skipped: dict[str, str] = {}  # path: why it is not a readable image
        self.unlabelled_share: float | None = None  # `add_unlabelled_images`: their share of each batch

    def _init_classes(self, class_names: list[str] | None) -> None:
        """The classes: given (from a checkpoint), or those of the labelled folder."""
        if class_names:
            # From a checkpoint: the folder is checked when it is needed (predict and export
            # need none, so the demo data is not generated for them).
            self.class_names = list(class_names)
            if self.root is not None:
                self._check_root()
        else:
            self._check_root()
        self.num_classes = len(self.class_names)

    def _check_root(self) -> None:
        """Resolve the labelled folder (the demo data by default) and its classes."""
        expected = getattr(self, "class_names", None)
        if self.label_file is not None:
            self._read_label_file(expected)
            return
        if self.root is None:
            if expected is not None and expected != sorted(demo.CLASSES):
                # Checked before generating: data/demo may be inside the user's own data folder.
                raise ValueError(
                    f"the model was trained on {_preview(expected)}, not on the demo data: give a folder "
                    f"with its classes, --data.root DIR"
                )
            self.root = demo.generate(DEMO_ROOT)
        if is_shard_folder(self.root):
            self.shards = open_shards(self.root)
            found = self.shards.class_names
            self.multilabel = self.hparams.task == "multilabel" or (
                self.hparams.task == "auto" and self.shards.multilabel
            )
        elif not self.root.is_dir():
            raise FileNotFoundError(f"--data.root {self.root} is not a folder: give a folder of class folders")
        else:
            found = folder_classes(self.root)
        if expected is not None and expected != found:
            raise ValueError(
                f"{self.root} has classes {_preview(found)} but the model was trained on {_preview(expected)}: use "
                f"a folder with the model's classes, or fine-tune with --model.weights CKPT to learn new classes"
            )
        self.class_names = found

    def _read_label_file(self, expected: list[str] | None) -> None:
        """The classes, images and task of the label file (the classes fixed by a checkpoint's
        `expected`); its bad rows listed, or, with `strict`, refused."""
        hp = self.hparams
        if self.root is not None and not self.root.is_dir():
            raise FileNotFoundError(
                f"--data.root {self.root} is not a folder: give the folder the label file's paths start in"
            )
        table = read_label_file(
            self.label_file, self.root, expected, single_label=hp.task == "multiclass", check_files=hp.check_files
        )
        self._report_bad_rows(table)
        if not table.class_names:
            raise ValueError(f"--data.label_file {self.label_file} has no usable row: see the lines listed above")
        self.label_table = table
        self.class_names = table.class_names
        self.multilabel = hp.task == "multilabel" or (hp.task == "auto" and table.multilabel)

    def _report_bad_rows(self, table: LabelTable) -> None:
        """Name the rows left out of the label file in the log, or with `strict` stop."""
        if not table.bad_rows:
            return
        lines = [str(row) for row in table.bad_rows]
        if self.hparams.strict:
            raise ValueError(
                f"{len(lines)} rows of {self.label_file} cannot be used, e.g. {lines[0]}: mend them, or drop "
                f"--data.strict to leave them out"
            )
        warn_listing(f"leaving out {len(lines)} rows of {self.label_file}", lines)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        if "train" in self.splits:
            return
        if self.root is None and self.label_table is None:
            self._check_root()
        self._list_splits()
        self._check_sampler()
        self._check_empty_classes()
        digest = self._check_same_on_every_rank()
        self._log_listing(digest)
        if stage in (None, "fit"):
            median_side = self._median_short_side()
            self._check_image_size(median_side)
            self._suggest_small_data_recipe(median_side)

    def _setup_predict(self) -> None:
        """List the readable images under `predict_root` once, each labelled by its position."""
        if self.predict_root is None:
            raise ValueError("predict needs images: pass --data.predict_root DIR")
        if "predict" in self.splits:
            return
        paths = self._readable([(p, 0) for p in list_all_images(self.predict_root)])
        if not paths:
            raise FileNotFoundError(f"no readable images under --data.predict_root {self.predict_root}")
        self.splits["predict"] = [(p, i) for i, (p, _) in enumerate(paths)]  # label = position
        log.info("predict: %d images under %s", len(paths), self.predict_root)

    def add_unlabelled_images(self, root: str, share: float) -> None:
        """Images without labels (any depth under `root`, checked as the labelled ones are) beside
        every training batch: `share` of each batch, the labelled part keeping `batch_size`.
        Training batches become (images, targets, unlabelled images)."""
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--distill.extra_root {folder} is not a folder: give a folder of images")
        samples = self._readable([(path, 0) for path in list_all_images(folder)])  # (label: unused)
        if not samples:
            raise FileNotFoundError(f"no readable images under --distill.extra_root {folder}")
        self.splits["unlabelled"] = samples
        self.unlabelled_share = share
        log.info(
            "unlabelled images: %d under %s, %d beside each batch of %d",
            len(samples),
            folder,
            self.unlabelled_batch_size,
            self.batch_size,
        )

    @property
    def unlabelled_batch_size(self) -> int:
        """Unlabelled images per training batch: `unlabelled_share` of the whole, at least one."""
        share = self.unlabelled_share or 0.0
        return max(1, round(self.batch_size * share / (1 - share)))

    def _list_splits(self) -> None:
        """The train, val and test samples: from the shards, or listed (and checked) from the
        folder; an error when train or val has no readable image."""
        hp = self.hparams
        if self.label_table is not None:
            self.splits.update(self._label_file_splits())
        elif self.shards is not None:
            self.splits.update(self.shards.splits)  # listed and checked once, by `prepare`
            self.skipped.update(self.shards.bad_files)
        else:
            self.splits.update(
                folder_splits(self.root, self.class_names, hp.val_fraction, hp.seed, readable=self._readable)
            )
        for split in ("train", "val"):
            if not self.splits[split]:
                raise FileNotFoundError(f"no readable images for {split} in {self.label_file or self.root}")

    def _label_file_splits(self) -> dict[str, list]:
        """The label file's train, val and test samples: by its `split` column, or split as a
        folder of class folders is. Without test rows, test is the val list."""
        samples = self.label_table.samples(self.multilabel)
        if self.label_table.has_splits:
            splits = {"train": samples.get("train", []), "val": samples.get("val", [])}
        else:
            train, val = stratified_split(samples.get(None, []), self.hparams.val_fraction, self.hparams.seed)
            splits = {"train": train, "val": val}
        splits["test"] = samples.get("test") or splits["val"]
        return splits

    def _log_listing(self, digest: str) -> None:
        counts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        log.info(
            "data: %s, %d classes%s, images: %s, training crop %d, evaluation crop %d, listing %s",
            self.label_file or self.root,
            self.num_classes,
            " (multi-label)" if self.multilabel else "",
            counts,
            self.train_size,
            self.preprocessing.crop_size,
            digest,
        )

    def _median_short_side(self) -> int | None:
        """The median short side of (a sample of) the training images; None: unknown."""
        paths = [path for path, _ in self.splits["train"][:: max(1, len(self.splits["train"]) // 20)]]
        sides = sorted(side for side in (min(image_size(path)) for path in paths) if side)
        return sides[len(sides) // 2] if sides else None

    def _check_image_size(self, median_side: int | None) -> None:
        """Say once when the images are much smaller than the crop: every one is upsampled, at a
        cost in compute and no gain in detail."""
        if median_side is not None and median_side * 2 <= self.train_size:
            log.warning(
                "the training images are much smaller than the crop (median short side %d px, crop %d px): each is "
                "upsampled; --data.image_size %d trains faster on the same detail",
                median_side,
                self.train_size,
                median_side,
            )

    def _suggest_small_data_recipe(self, median_side: int | None) -> None:
        """Point a user's set of few or small images, cropped as ImageNet is, to the recipes
        measured for small data."""
        count = len(self.splits["train"])
        small = median_side is not None and median_side <= SMALL_IMAGE_SIDE
        if self.hparams.root is None or not (count < SMALL_DATA_IMAGES or small):
            return
        if tuple(self.hparams.crop_scale) != IMAGENET_CROP_SCALE:
            return  # a recipe, or the user's own choice
        log.info(
            "%d training images%s, cropped as ImageNet's are (8-100%% of each image): from scratch, "
            "--config configs/scratch.yaml holds settings measured on small sets (docs/from-scratch.md); "
            "from pretrained weights, --config configs/finetune.yaml",
            count,
            f" of about {median_side} px" if small else "",
        )

    def _readable(self, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The samples whose files read as images; the others are listed in the log (or, with
        `strict`, stop the run)."""
        bad = find_bad_images([path for path, _ in samples]) if self.hparams.check_files else {}
        if not bad:
            return samples
        lines = [f"{path} ({problem})" for path, problem in bad.items()]
        if self.hparams.strict:
            raise BadImageError(
                f"{len(bad)} of {len(samples)} files are not readable images, e.g. {lines[0]}: remove "
                f"or replace them, or drop --data.strict to skip them"
            )
        warn_listing(f"skipping {len(bad)} of {len(samples)} files that are not readable images", lines)
        self.skipped.update(bad)
        return [s for s in samples if s[0] not in bad]

    def _check_sampler(self) -> None:
        if self.multilabel and self.hparams.weighted_sampler:
            raise ValueError(
                "--data.weighted_sampler draws images by their one class, and a multi-label image has several: "
                "drop it and weight each class's positives with --model.class_weighted_loss true"
            )

    def _check_empty_classes(self) -> None:
        empty = [name for name, n in zip(self.class_names, self.class_counts()) if n == 0]
        if not empty:
            return
        where = (
            f"class(es) {_preview(empty)} of {self.label_file}"
            if self.label_file
            else f"class folder(s) {_preview(empty)} under {self.root}"
        )
        if not self.hparams.allow_empty_classes:
            remedy = "label images with them" if self.label_file else "add images, remove the folders"
            raise ValueError(f"{where} have no training images: {remedy}, or pass --data.allow_empty_classes true")
        log.warning(f"{where} have no training images; their outputs will not learn")

    def _check_same_on_every_rank(self) -> str:
        """A digest of the classes and splits, compared across processes: every rank must train
        on the same split with the same class indices (a different file system view on one
        node would otherwise mislabel silently)."""
        listing = repr((self.class_names, self.splits["train"], self.splits["val"], self.splits["test"]))
        digest = hashlib.sha1(listing.encode()).hexdigest()[:12]
        if _distributed():
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, digest)
            check_same_listing(digests)
        return digest

    @property
    def batch_size(self) -> int:
        """Images per batch on each device: the global batch is batch_size x devices x nodes
        (x accumulate_grad_batches per optimizer step)."""
        return self.hparams.batch_size

    def class_counts(self) -> list[int]:
        """Training images per class (after setup)."""
        counts = [0] * self.num_classes
        for label in sample_labels(self.splits["train"]):
            for index in (label,) if isinstance(label, int) else label:
                counts[index] += 1
        return counts

    def train_images(self) -> int:
        """Training images (after setup)."""
        return len(self.splits["train"])

    def predict_paths(self) -> list[str]:
        return [path for path, _ in self.splits["predict"]]

    def next_epoch(self) -> int:
        """The training epoch that runs next. (While a resumed fit builds its first loader,
        `Trainer.current_epoch` still names the last finished epoch; the fit loop's progress
        counter, which has no other public accessor, already names the next. Before the loops are
        restored, when the trainer first builds the loader to count its steps, the checkpoint's
        epoch, from this data module's state, stands in.)"""
        if self.trainer is None:
            return self._resume_epoch
        return max(self._resume_epoch, self.trainer.fit_loop.epoch_progress.current.processed)

    def train_stage(self) -> Stage:
        """The training settings of the next epoch: its stage's under progressive learning,
        else the data module's own."""
        if self.stage_at is not None:
            return self.stage_at(self.next_epoch())
        hp = self.hparams
        return Stage(0, 1, self.train_size, hp.randaugment_magnitude, hp.mixup_alpha, hp.cutmix_alpha)

    def _loader(self, split: str, pre: Preprocessing, stage: Stage | None = None) -> DataLoader:
        """The loader of `split` at `pre`'s size (training: with `stage`'s augmentation). The
        trainer asks again every epoch under progressive learning: the same settings hand back
        the same loader, so its worker processes live on."""
        distributed = _distributed()
        key = (pre, stage, distributed)
        name = f"{split}@{pre.crop_size}"
        cached = self._loaders.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        loader = self._new_loader(split, pre, stage, distributed)
        self._loaders[name] = (key, loader)
        return loader

    def _new_loader(self, split: str, pre: Preprocessing, stage: Stage | None, distributed: bool) -> DataLoader:
        """A loader of `split`: training (with `stage`) draws in the seeded order and mixes
        batches when the stage does; evaluation reads every image once, in order."""
        hp = self.hparams
        train = stage is not None
        mixing = train and (stage.mixup_alpha > 0 or stage.cutmix_alpha > 0)
        dataset = self._dataset(split, pre, stage, with_seed=mixing)
        sampler = (
            self._train_sampler(dataset, distributed) if train else self._eval_sampler(split, dataset, distributed)
        )
        collate = (
            MixCollate(self.num_classes, stage.mixup_alpha, stage.cutmix_alpha, self.multilabel) if mixing else None
        )
        # The training loader's position (batches handed out this epoch) goes into checkpoints: a fit
        # stopped mid-epoch resumes with the very batches the uninterrupted run would have had next.
        return (StatefulDataLoader if train else DataLoader)(
            dataset,
            batch_size=hp.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > hp.batch_size,
            collate_fn=collate,
            **self._worker_settings(),
        )

    def _worker_settings(self) -> dict:
        """The loader arguments every loader of this module shares: its worker processes, and
        where they take their signals and seeds from."""
        workers = self.hparams.num_workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
            # A signal sent to the whole process group is the main process's to act on (stop at a
            # batch boundary, checkpoint, shut the workers down): the workers leave it to it.
            "worker_init_fn": LeavingStopSignals(),
            # Its own generator: starting an iteration (resumes and sanity checks start more of them)
            # draws worker seeds from it, not from the global one that dropout and augmentation use.
            "generator": torch.Generator().manual_seed(torch.initial_seed()),
        }

    def _unlabelled_loader(self, batches: int, stage: Stage) -> StatefulDataLoader:
        """`batches` batches of the unlabelled images, each of `unlabelled_batch_size`, under the
        training transform and mixing of `stage`; under DDP, this process's share."""
        distributed = _distributed()
        key = (self.preprocessing, stage, distributed, batches)
        cached = self._loaders.get("unlabelled")
        if cached is not None and cached[0] == key:
            return cached[1]
        mixing = stage.mixup_alpha > 0 or stage.cutmix_alpha > 0
        dataset = self._dataset("unlabelled", self.preprocessing, stage, with_seed=mixing)
        per_batch = self.unlabelled_batch_size
        replicas = dist.get_world_size() if distributed else 1
        order = CycledOrder(len(dataset), batches * per_batch * replicas, torch.initial_seed(), self.next_epoch)
        loader = StatefulDataLoader(
            dataset,
            batch_size=per_batch,
            sampler=RankShare(order) if distributed else order,
            drop_last=True,
            collate_fn=MixCollate(self.num_classes, stage.mixup_alpha, stage.cutmix_alpha, self.multilabel)
            if mixing
            else None,
            **self._worker_settings(),
        )
        self._loaders["unlabelled"] = (key, loader)
        return loader

    def _dataset(self, split: str, pre: Preprocessing, stage: Stage | None, with_seed: bool) -> ImageFileDataset:
        """`split`'s images under the training transform at `stage`'s size and augmentation, or,
        with no stage, under the evaluation transform at `pre`'s size."""
        hp = self.hparams
        if stage is not None:
            transform = train_transform(
                pre.resized(stage.image_size), hp.augment, hp.crop_scale, hp.random_erasing, stage.randaugment_magnitude
            )
        else:
            transform = eval_transform(pre)
        # Training decodes straight to tensors (faster; see benchmarks/input_pipeline.py); evaluation
        # reads through PIL, as the pretrained weights were evaluated.
        decode = decode_rgb if stage is not None else load_rgb
        # Multi-hot targets for labelled splits (predict's and the unlabelled images' labels are positions).
        classes = self.num_classes if self.multilabel and split in ("train", "val", "test") else None
        return ImageFileDataset(
            self.splits[split], transform, strict=hp.strict, decode=decode, with_seed=with_seed, multi_hot=classes
        )

    def _train_sampler(self, dataset: ImageFileDataset, distributed: bool) -> SeededOrder | RankShare:
        """Order, augmentation and mixing from (seed, epoch) alone: resumes and rebuilt loaders
        replay them exactly; under DDP, each process's share of that order. With
        `weighted_sampler`, each image is drawn with probability 1 / (images in its class)."""
        counts = self.class_counts() if self.hparams.weighted_sampler else None
        weights = [1.0 / counts[label] for label in sample_labels(dataset.samples)] if counts else None
        order = SeededOrder(len(dataset), torch.initial_seed(), self.next_epoch, weights)
        return RankShare(order) if distributed else order

    @staticmethod
    def _eval_sampler(split: str, dataset: ImageFileDataset, distributed: bool) -> UnrepeatedDistributedSampler | None:
        """Under DDP, every val / test image exactly once across ranks (no padding duplicates), so
        metrics equal a single-process run (Lightning does the same for predict); else None."""
        if split in ("val", "test") and distributed:
            return UnrepeatedDistributedSampler(dataset, shuffle=False)
        return None

    def train_dataloader(self) -> DataLoader | WithUnlabelled:
        stage = self.train_stage()
        loader = self._loader("train", self.preprocessing, stage)
        if self.unlabelled_share is not None:
            loader = WithUnlabelled(loader, self._unlabelled_loader(len(loader), stage))
        if self._train_position is not None:
            loader.load_state_dict(self._train_position)  # before its first iteration: it starts there
            self._train_position = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict:
        """The epoch a resumed fit trains next and the training loader's position in it (batches
        handed out; with workers, theirs too): checkpoints save them, and a fit resumed from one
        draws the batches that follow. At the end of an epoch (also one cut short by
        `limit_train_batches`) there is no position: the resumed fit starts the next epoch afresh."""
        trainer = self.trainer
        if self._train_loader is None or trainer is None:
            return {}
        done = completed_batches(trainer) >= trainer.num_training_batches
        if done:
            return {"epoch": trainer.current_epoch + 1}
        return {"epoch": trainer.current_epoch, "train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores the data module before the fit first asks for the training loader. That
        # first loader is built and iterated before the loops are restored (the scheduler's step count
        # asks for it), and a resumed fit keeps that iterator, so the epoch and position it starts from
        # come from here. (Lightning's own copy of the position is restored into no loader then.)
        self._resume_epoch = state_dict.get("epoch", 0)
        self._train_position = state_dict.get("train_loader")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """At the evaluation size; with `extra_eval_sizes`, one more loader per size."""
        main = self._loader("val", self.preprocessing)
        if not self.extra_eval_sizes:
            return main
        return [main, *(self._loader("val", self.preprocessing.resized(size)) for size in self.extra_eval_sizes)]

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.preprocessing)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.preprocessing)

    def evaluation_images(self, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `split` under the evaluation transform, all in memory: every image,
        or `limit` of them drawn with the data seed (e.g. calibration images for INT8 export).
        Multi-label: the labels are multi-hot rows."""
        self.setup("validate")
        samples = self.splits[split]
        if limit is not None and limit < len(samples):
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.hparams.seed))
            samples = [samples[i] for i in sorted(order[:limit].tolist())]
        multi_hot = self.num_classes if self.multilabel else None
        dataset = ImageFileDataset(
            samples,
            eval_transform(self.preprocessing),
            strict=self.hparams.strict,
            decode=load_rgb,
            multi_hot=multi_hot,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            worker_init_fn=LeavingStopSignals(),
        )
        images, labels = zip(*loader)
        return torch.cat(images), torch.cat(labels)


class WithUnlabelled:
    """The training batches with a batch of unlabelled images beside each: (images, targets,
    unlabelled images), as many as the labelled loader has; the position of both goes into
    checkpoints, so a resumed fit draws the very batches that follow."""

    def __init__(self, labelled: StatefulDataLoader, unlabelled: StatefulDataLoader):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.labelled)

    def __iter__(self):
        for (images, targets, *_), (unlabelled, *_) in zip(self.labelled, self.unlabelled):
            yield images, targets, unlabelled

    def state_dict(self) -> dict:
        return {"labelled": self.labelled.state_dict(), "unlabelled": self.unlabelled.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "labelled" not in state:  # a checkpoint of a fit without unlabelled images
            self.labelled.load_state_dict(state)
            return
        self.labelled.load_state_dict(state["labelled"])
        self.unlabelled.load_state_dict(state["unlabelled"])


def check_sizes(
    batch_size: int, image_size: int | None, eval_image_size: int | None, extra_eval_sizes: list[int] | None
) -> None:
    """Raise unless the batch size and every image size given are positive."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    named = [("image_size", image_size), ("eval_image_size", eval_image_size)]
    for name, size in named + [("extra_eval_sizes", size) for size in extra_eval_sizes or []]:
        if size is not None and size < 1:
            raise ValueError(f"{name} must be positive, got {size}")


def check_augmentation(
    randaugment_magnitude: int,
    crop_scale: tuple[float, float],
    random_erasing: float,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> None:
    """Raise unless the augmentation settings are in their ranges."""
    if not 0 <= randaugment_magnitude <= 30:
        raise ValueError(f"randaugment_magnitude must be in 0-30, got {randaugment_magnitude}")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}")
    if not 0 <= random_erasing <= 1 or mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(
            f"need 0 <= random_erasing <= 1 and mixup_alpha, cutmix_alpha >= 0, got "
            f"{random_erasing}, {mixup_alpha}, {cutmix_alpha}"
        )


@dataclass(frozen=True)
class ResolvedSizes:
    """The image sizes of a run: the training crop, the evaluation preprocessing (its crop is the
    evaluation size) and the further sizes validated, without the evaluation size itself."""

    train: int
    evaluation: Preprocessing
    extra_eval: tuple[int, ...] = ()


def resolve_sizes(
    preprocessing: dict | None,
    image_size: int | None = None,
    eval_image_size: int | None = None,
    extra_eval_sizes: list[int] | None = None,
) -> ResolvedSizes:
    """The sizes the data module's arguments ask for. The training crop is `image_size`, else
    the weights' crop; the evaluation crop is `eval_image_size`, else `image_size`, else the
    weights' test size or crop, resized at the weights' crop fraction (no preprocessing: 224 px,
    ImageNet's). Extra evaluation sizes keep their first order, once each."""
    pre = Preprocessing(**preprocessing) if preprocessing else Preprocessing.for_resolution(224)
    eval_size = eval_image_size or image_size or pre.test_size or pre.crop_size
    return ResolvedSizes(
        train=image_size or pre.crop_size,
        evaluation=pre.resized(eval_size) if eval_size != pre.crop_size else pre,
        extra_eval=tuple(size for size in dict.fromkeys(extra_eval_sizes or []) if size != eval_size),
    )


def warn_listing(header: str, lines: list[str]) -> None:
    """One warning: `header`, then the first LISTED_BAD_FILES lines, the rest counted."""
    more = f"\n  ... and {len(lines) - LISTED_BAD_FILES} more" if len(lines) > LISTED_BAD_FILES else ""
    log.warning(f"{header}:\n  " + "\n  ".join(lines[:LISTED_BAD_FILES]) + more)


def predict_folder(predict_root: str | None) -> Path | None:
    """`--data.predict_root` as a path (None: not given); an error unless it is a folder."""
    if not predict_root:
        return None
    folder = Path(predict_root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--data.predict_root {folder} is not a folder: give a folder of images")
    return folder


def root_location(root: str | None) -> Path | str | None:
    """`--data.root` as a path, or as the URL of shards in an object store (None: not given)."""
    if is_shard_url(root):
        return root
    return Path(root).expanduser() if root else None


def recorded_root(root: str | None) -> str | None:
    """`--data.root` as a checkpoint records it: a local folder absolute, a URL as given."""
    if not root or is_shard_url(root):
        return root
    return str(Path(root).expanduser().absolute())


def _distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_same_listing(digests: list[str]) -> None:
    """Raise unless every rank's data digest equals rank 0's."""
    differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ValueError(
            f"processes {differ} see other files or classes than process 0 (data digests {digests}): "
            f"give every process the same --data.root contents"
        )


def _preview(names, n: int = 5) -> str:
    names = list(names)
    return str(names[:n])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > n else "]")
