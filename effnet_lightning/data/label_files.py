"""Label files: a CSV naming each image's labels, instead of a folder per class.

    image,labels[,split]                      labels: class names separated by spaces
    image,<class>,<class>,...[,split]         one 0/1 column per class

`image` is a path relative to the file's folder (or to the base folder given, `--data.root`).
Rows that repeat an image add their labels to it (the long format: one row per image-label
pair); an image with more than one label makes the set multi-label. `split` (train, val or
test), when present, places each image; without it the folders' seeded split does. A row that
cannot be used (no such file, no label, an unknown label, a bad 0/1 cell or split, a second
label for an image of a single-label task) is listed with its line number and left out.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from effnet_lightning.data.folders import find_bad_images

SPLITS = ("train", "val", "test")
RESERVED = ("image", "split")


@dataclass(frozen=True)
class BadRow:
    """A row left out: its line in the file (the header is line 1) and why."""

    line: int
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.problem}"


@dataclass
class LabelledImage:
    """One image of the file: its labels (class names), split (None: not given) and first line."""

    line: int
    labels: set[str] = field(default_factory=set)
    split: str | None = None


@dataclass
class LabelTable:
    """What a label file says: the classes, the usable images (path -> `LabelledImage`) and the rows
    left out."""

    class_names: list[str]
    images: dict[str, LabelledImage]
    bad_rows: list[BadRow]
    has_splits: bool

    @property
    def multilabel(self) -> bool:
        """Whether any image has more than one label."""
        return any(len(image.labels) > 1 for image in self.images.values())

    def samples(self, multilabel: bool) -> dict[str | None, list[tuple[str, int | tuple[int, ...]]]]:
        """(path, label) per split (key None: no split given), in the file's order of paths: the
        label is a class index, or for a multi-label task the sorted tuple of class indices."""
        index = {name: i for i, name in enumerate(self.class_names)}
        out: dict[str | None, list] = {}
        for path, image in sorted(self.images.items()):
            labels = tuple(sorted(index[name] for name in image.labels))
            out.setdefault(image.split, []).append((path, labels if multilabel else labels[0]))
        return out


class LabelFileError(ValueError):
    """A label file that cannot be read as one: the message says what it needs."""


def read_label_file(
    path: str | Path,
    base: str | Path | None = None,
    class_names: list[str] | None = None,
    single_label: bool = False,
    check_files: bool = True,
) -> LabelTable:
    """The label file at `path`, its images relative to `base` (None: the file's folder).

    `class_names` fixes the classes (from a checkpoint: a label outside them is a bad row);
    None takes them from the file: the sorted names of a `labels` column, or the 0/1 columns in
    their order. `single_label`: an image given two labels is a bad row (each of its rows),
    instead of a multi-label image. `check_files`: also read each file's header, so unreadable
    images are bad rows too (else only missing files are)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--data.label_file {path} is not a file: give a CSV with a column `image`")
    folder = Path(base).expanduser() if base is not None else path.parent
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        parse = _row_parser(path, columns, class_names)
        table = _collect(reader, parse, folder, single_label, has_splits="split" in columns)
    names = class_names or (_column_classes(columns) or sorted({n for i in table.images.values() for n in i.labels}))
    table.class_names = list(names)
    _drop_missing_files(table, check_files)
    table.bad_rows.sort(key=lambda row: row.line)
    return table


def _column_classes(columns: list[str]) -> list[str]:
    return [] if "labels" in columns else [c for c in columns if c not in RESERVED]


def _row_parser(path: Path, columns: list[str], class_names: list[str] | None):
    """A function from a row to (labels, problem): the `labels` column's names, or the names
    of the 0/1 columns that hold 1."""
    if "image" not in columns:
        raise LabelFileError(
            f"{path} has columns {', '.join(columns) or '(none)'}: a label file needs a column `image` and "
            f"either `labels` (class names separated by spaces) or one 0/1 column per class"
        )
    known = set(class_names) if class_names else None
    class_columns = _column_classes(columns)
    if "labels" not in columns and not class_columns:
        raise LabelFileError(f"{path} has no labels: add a column `labels`, or one 0/1 column per class")
    if known is not None and class_columns and class_columns != list(class_names):
        raise LabelFileError(
            f"{path} has class columns {', '.join(class_columns)} but the model's classes are "
            f"{', '.join(class_names)}: use the model's classes, in its order"
        )

    def names_of(row: dict) -> tuple[set[str], str | None]:
        cell = (row.get("labels") or "").split()
        unknown = [name for name in cell if known is not None and name not in known]
        if unknown:
            return set(), f"unknown label {unknown[0]!r} (not one of the model's {len(known)} classes)"
        return set(cell), None

    def columns_of(row: dict) -> tuple[set[str], str | None]:
        labels = set()
        for name in class_columns:
            value = (row.get(name) or "").strip()
            if value not in ("0", "1"):
                return set(), f"column {name} holds {value!r}, not 0 or 1"
            if value == "1":
                labels.add(name)
        return labels, None

    return names_of if "labels" in columns else columns_of


def _collect(reader: csv.DictReader, parse, folder: Path, single_label: bool, has_splits: bool) -> LabelTable:
    """Every row into the table: its labels added to its image's, or a bad row."""
    table = LabelTable([], {}, [], has_splits)
    conflicted: dict[str, list[int]] = {}
    for row in reader:
        line = reader.line_num
        image, problem = _row_image(row, parse, has_splits, line)
        if not problem and single_label and len(image.labels) > 1:
            problem = f"{len(image.labels)} labels ({' '.join(sorted(image.labels))}) for a single-label task"
        if problem:
            table.bad_rows.append(BadRow(line, problem))
            continue
        key = str(folder / row["image"].strip())
        seen = table.images.get(key)
        if seen is None:
            table.images[key] = image
        elif seen.split != image.split:
            table.bad_rows.append(BadRow(line, f"split {image.split} but line {seen.line} puts it in {seen.split}"))
        elif single_label and image.labels != seen.labels:
            conflicted.setdefault(key, [seen.line]).append(line)
        else:
            seen.labels |= image.labels
    for key, lines in conflicted.items():
        del table.images[key]
        table.bad_rows += [BadRow(line, f"a single-label image labelled again on lines {lines}") for line in lines]
    return table


def _row_image(row: dict, parse, has_splits: bool, line: int) -> tuple[LabelledImage | None, str | None]:
    """A row's image, or why the row cannot be used."""
    if not (row.get("image") or "").strip():
        return None, "no image path"
    labels, problem = parse(row)
    if problem:
        return None, problem
    if not labels:
        return None, "no label"
    split = (row.get("split") or "").strip() if has_splits else None
    if has_splits and split not in SPLITS:
        return None, f"split {split!r} is not train, val or test"
    return LabelledImage(line, labels, split), None


def _drop_missing_files(table: LabelTable, check_files: bool) -> None:
    """Images whose file is missing (or, checked, not a readable image) become bad rows."""
    missing = {path: "no such file" for path in table.images if not Path(path).is_file()}
    present = [path for path in table.images if path not in missing]
    problems = {**missing, **(find_bad_images(present) if check_files else {})}
    for path, problem in problems.items():
        image = table.images.pop(path)
        table.bad_rows.append(BadRow(image.line, f"{path}: {problem}"))
