"""An image folder against its shards: data setup per process, process start to the first
training step, and training-loader throughput per worker.

    python benchmarks/shard_loading.py                      # 100,000 files; docs/shards/results.json
    python benchmarks/shard_loading.py --files 20000 --out /tmp/shards-check

1. A generated folder of `--files` JPEGs in 10 classes (64 x 48 px: a file's setup cost is a
   listing entry and a header read, not its bytes, and small files keep the folder quick to
   write), and its shards from `python cli.py prepare` (timed: a one-time cost).
2. Data setup of one process with a warm cache: `ImageFolderDataModule.setup("fit")` with the
   default file checks, against the same on the shards; the median of `--repeats`.
3. Process start to the first training step: `python cli.py fit` run until its first batch
   (the sanity check's validation batches included), both ways.
4. Training-loader throughput of one worker at 224 px (decode, random-resized crop, flip,
   normalise) over `--photos` photo-like 500 x 375 JPEGs, from their folder and their shards.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from input_pipeline import write_photos

from effnet_lightning.data.datamodule import ImageFolderDataModule

CLASSES = 10


class FirstStepClock(L.Callback):
    """Writes the wall-clock time of the first training batch to $FIRST_STEP_FILE and ends the
    process there (what follows is not measured)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Path(os.environ["FIRST_STEP_FILE"]).write_text(repr(time.time()))
        os._exit(0)


def write_folder(root: Path, files: int, seed: int = 0) -> None:
    """`files` JPEGs in CLASSES class folders: 50 distinct images a class, written over and over."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        encoded = []
        for _ in range(50):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=85)
            encoded.append(buffer.getvalue())
        for i in range(files // CLASSES + (c < files % CLASSES)):
            (folder / f"{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])


def run_prepare(root: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "prepare", "--data.root", str(root), "--output_dir", str(out)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def setup_seconds(root: Path, repeats: int) -> tuple[float, int]:
    """Median seconds of the data module's setup (each with a fresh module), and its train count."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = ImageFolderDataModule(root=str(root), image_size=48, num_workers=0)
        data.setup("fit")
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(data.splits["train"])


def first_step_seconds(root: Path) -> float:
    """Seconds from launching `cli.py fit` to its first training batch."""
    with tempfile.TemporaryDirectory() as work:
        clock = Path(work) / "first_step"
        env = {**os.environ, "FIRST_STEP_FILE": str(clock), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'benchmarks'}"}
        args = ["fit", "--data.root", str(root), "--data.image_size", "64", "--data.num_workers", "2"]
        args += ["--trainer.logger", "CSVLogger", "--trainer.enable_progress_bar", "false"]
        args += ["--trainer.callbacks+=shard_loading.FirstStepClock"]
        start = time.time()
        command = [sys.executable, str(REPO / "cli.py"), *args]
        done = subprocess.run(command, check=False, cwd=work, env=env, capture_output=True)
        if done.returncode:
            raise RuntimeError(f"fit failed: {done.stderr.decode()[-2000:]}")
        return float(clock.read_text()) - start


def loader_images_per_second(root: Path, batches: int) -> float:
    """One worker's training images per second at 224 px, the second pass over the loader."""
    data = ImageFolderDataModule(root=str(root), image_size=224, batch_size=32, num_workers=1, check_files=False)
    data.setup("fit")
    loader = data.train_dataloader()
    for _ in loader:  # starts the worker and warms the page cache
        pass
    start, seen = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader):
        seen += len(images)
        if i + 1 == batches:
            break
    rate = seen / (time.perf_counter() - start)
    del loader, data  # its worker goes now, before the next loader's workers start
    gc.collect()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--photos", type=int, default=1280, help="500 x 375 JPEGs for the throughput (1280)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "docs" / "shards"), help="where results.json goes")
    args = parser.parse_args()
    result = {"files": args.files, "photos": args.photos, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        start = time.perf_counter()
        write_folder(work / "folder", args.files)
        print(f"wrote {args.files} files in {time.perf_counter() - start:.0f} s", flush=True)
        result["prepare_s"] = run_prepare(work / "folder", work / "shards")
        print(f"prepare: {result['prepare_s']:.1f} s", flush=True)
        for kind in ("folder", "shards"):
            setup_seconds(work / kind, 1)  # warms the cache
            result[f"{kind}_setup_s"], result[f"{kind}_train_images"] = setup_seconds(work / kind, args.repeats)
            result[f"{kind}_first_step_s"] = first_step_seconds(work / kind)
            print(kind, {k: v for k, v in result.items() if k.startswith(kind)}, flush=True)

        for c in range(CLASSES):
            (work / "photos" / f"class{c:02d}").mkdir(parents=True)
            write_photos(work / "photos" / f"class{c:02d}", args.photos // CLASSES, (500, 375), seed=c)
        run_prepare(work / "photos", work / "photo-shards")
        batches = args.photos * 8 // 10 // 32  # the training split's full batches
        for kind, root in (("folder", work / "photos"), ("shards", work / "photo-shards")):
            result[f"{kind}_loader_img_s"] = loader_images_per_second(root, batches)
            print(f"{kind} loader: {result[f'{kind}_loader_img_s']:.1f} img/s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"setup {result['folder_setup_s'] / result['shards_setup_s']:.0f}x shorter from shards")


if __name__ == "__main__":
    main()
