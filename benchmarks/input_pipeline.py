"""Images per second one data-loading worker delivers: file decode plus the train transforms
(random-resized crop, flip, to float, normalise), on generated JPEGs of ImageNet's typical
size (500 x 375) and of camera size (3000 x 2000).

    python benchmarks/input_pipeline.py                      # 224 and 380 px crops
    python benchmarks/input_pipeline.py --sizes 224 --images 64 --repeats 5

Pipelines:
    pil          data.load_rgb (PIL), then the transforms on the PIL image (what training uses)
    pil-draft    PIL with Image.draft: libjpeg decodes a large JPEG at 1/2, 1/4 or 1/8 scale,
                 never below the crop size (fewer pixels to decode, less detail in small crops)
    tensor       decode.decode_rgb (torchvision.io) to a uint8 tensor, the transforms on it

One thread, as in a DataLoader worker. The pipelines run round-robin, `--repeats` times, over
the same files; medians. With benchmarks/results/ holding a models run of the same crop size,
the table also says how many workers keep the training step of `ours` fed.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from effnet_lightning.data.datamodule import train_transform
from effnet_lightning.data.decode import decode_rgb, load_rgb
from effnet_lightning.models.preprocessing import Preprocessing

RESULTS = Path(__file__).resolve().parent / "results"
PHOTO_SIZES = {"500x375": (500, 375), "3000x2000": (3000, 2000)}


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth shapes plus sensor-like noise: JPEG sizes (~100 KB at 500 x 375) like photos'."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = base + rng.normal(0, 10, base.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{size[0]}x{size[1]}-{i}.jpg"
        photo_like(*size, rng).save(path, quality=90)
        paths.append(str(path))
    return paths


def load_draft(path: str, crop_size: int) -> Image.Image:
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (crop_size, crop_size))  # the smallest DCT scale still >= crop_size
        return img.convert("RGB")


def pipelines(crop_size: int) -> dict:
    transform = train_transform(Preprocessing.for_resolution(crop_size))
    return {
        "pil": lambda path: transform(load_rgb(path)),
        "pil-draft": lambda path: transform(load_draft(path, crop_size)),
        "tensor": lambda path: transform(decode_rgb(path)),
    }


def model_train_img_s(crop_size: int) -> tuple[float, str] | None:
    """The training img/s of `ours` from the latest models run at this crop size, if any."""
    runs = sorted(RESULTS.glob(f"models-*-{crop_size}px-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(runs):
        rows = {row["config"]: row for row in json.loads(path.read_text())["rows"]}
        if "ours" in rows:
            return rows["ours"]["train_img_s"], path.stem
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 380], help="crop sizes")
    parser.add_argument("--images", type=int, default=24, help="500 x 375 JPEGs (and a quarter as many large ones)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {
            "500x375": write_photos(folder, args.images, PHOTO_SIZES["500x375"], 0),
            "3000x2000": write_photos(folder, max(1, args.images // 4), PHOTO_SIZES["3000x2000"], 1),
        }
        for crop_size in args.sizes:
            runs = pipelines(crop_size)
            for photo, paths in files.items():
                for run in runs.values():
                    run(paths[0])  # first call: imports, caches
                seconds = {name: [] for name in runs}
                for _ in range(args.repeats):
                    for name, run in runs.items():
                        start = time.perf_counter()
                        for path in paths:
                            run(path)
                        seconds[name].append(time.perf_counter() - start)
                for name in runs:
                    rate = statistics.median(len(paths) / s for s in seconds[name])
                    rows.append({"crop": crop_size, "photo": photo, "pipeline": name, "img_s_per_worker": rate})
    for row in rows:
        pil = next(r for r in rows if (r["crop"], r["photo"], r["pipeline"]) == (row["crop"], row["photo"], "pil"))
        row["vs_pil"] = row["img_s_per_worker"] / pil["img_s_per_worker"]
        model = model_train_img_s(row["crop"])
        row["model_train_img_s"] = model[0] if model else None
        row["workers_needed"] = model[0] / row["img_s_per_worker"] if model else None
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / "input-pipeline"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written: {stem}.csv, {stem}.json")


def print_table(rows: list[dict]) -> None:
    print("| crop | photo | pipeline | img/s per worker | vs pil | model train img/s | workers to keep up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        model = f"{r['model_train_img_s']:.1f}" if r["model_train_img_s"] else "-"
        workers = f"{r['workers_needed']:.2f}" if r["workers_needed"] else "-"
        rate = f"{r['img_s_per_worker']:.1f} | {r['vs_pil']:.2f}x"
        print(f"| {r['crop']} | {r['photo']} | {r['pipeline']} | {rate} | {model} | {workers} |")


if __name__ == "__main__":
    main()
