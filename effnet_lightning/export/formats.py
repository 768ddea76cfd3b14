"""The export formats: what one is (`Format`: the file it writes, a writer and a check) and
where they are found. Every module of this package that defines a module-level `FORMAT` is a
format, so adding one is adding one file; `rank` places it among the others.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effnet_lightning.export.job import ExportJob


@dataclass(frozen=True)
class Checked:
    """What a format's check measured, recorded in model.json."""

    logit_difference: float | None = None  # largest |logit difference| of the file loaded back; None: not compared
    record: dict = field(default_factory=dict)  # further model.json entries (onnx_int8: "int8", its accuracy)


@dataclass(frozen=True)
class Format:
    """One export format, as `--formats` names it."""

    name: str
    file: str  # the file (or folder) it writes into the output folder
    rank: int  # its place in the list of formats (the order --formats and the errors give)
    write: Callable[[ExportJob, Path], None]  # writes the file at the path
    check: Callable[[ExportJob, Path], Checked]  # loads the written file back; raises ValueError when it fails
    default: bool = False  # written when no format is named
    # raises, before anything is written, when the job's network or data cannot be exported to it;
    # None: every network can be
    refuse: Callable[[ExportJob], None] | None = None


def registered() -> dict[str, Format]:
    """{name: format} of every format module of this package, in rank order."""
    package = importlib.import_module(__package__)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if isinstance(getattr(module, "FORMAT", None), Format):
            found.append(module.FORMAT)
    return {fmt.name: fmt for fmt in sorted(found, key=lambda fmt: fmt.rank)}


def all_formats() -> tuple[str, ...]:
    return tuple(registered())


def default_formats() -> tuple[str, ...]:
    return tuple(name for name, fmt in registered().items() if fmt.default)


def check_formats(formats) -> None:
    """A one-line error for an unknown or missing format name."""
    known = all_formats()
    unknown = set(formats) - set(known)
    if unknown or not formats:
        what = f"unknown export formats {sorted(unknown)}" if unknown else "no export format given"
        raise ValueError(f"{what}: choose from {', '.join(known)}")


def requested_formats(formats: list[str] | str | None, push_to: str | None = None) -> list[str]:
    """The formats `--formats` names (a list, or "onnx,torchscript"; None: the defaults), checked;
    an upload (`push_to`) adds the hub folder it uploads."""
    if isinstance(formats, str):
        formats = [name.strip() for name in formats.split(",")]
    formats = list(default_formats()) if formats is None else list(formats)
    check_formats(formats)
    if push_to and "hub" not in formats:
        formats.append("hub")
    return formats
