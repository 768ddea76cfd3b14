"""Small generated image sets with label files: coloured blocks on a grey canvas, each image
labelled with the colours it shows (one to three of them, or exactly one)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 70, 220), "yellow": (230, 210, 40)}


def draw(colours: list[str], rng: random.Random, size: int = 32) -> Image.Image:
    """A grey canvas with one block of each colour, at random places and sizes."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    pen = ImageDraw.Draw(image)
    for name in colours:
        w, h = rng.randint(size // 4, size // 2), rng.randint(size // 4, size // 2)
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        pen.rectangle((x, y, x + w, y + h), fill=COLOURS[name])
    return image


def write_set(root: Path, images: int, seed: int = 0, max_labels: int = 3, splits: bool = False) -> Path:
    """`images` images under root/images/ and root/labels.csv (image,labels[,split]); with
    max_labels 1, a single-label set. Returns the label file."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        colours = sorted(rng.sample(sorted(COLOURS), rng.randint(1, max_labels)))
        name = f"images/{i:04d}.png"
        draw(colours, rng).save(root / name)
        row = {"image": name, "labels": " ".join(colours)}
        if splits:
            row["split"] = "val" if i % 4 == 0 else "train"
        rows.append(row)
    path = root / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
