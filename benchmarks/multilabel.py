"""Multi-label training on two generated sets unlike ImageNet: binary cross-entropy against the
asymmetric loss, Lite0 fine-tuned from its packaged ImageNet weights and B0 from scratch, seed
by seed, beside the mAP of the label-prior baseline. Every run is the real `python cli.py`.

    python benchmarks/multilabel.py                              # both sets, seeds 1 2 3
    python benchmarks/multilabel.py --sets digits-ml --seeds 1
    python benchmarks/multilabel.py --summary-only docs/multilabel
    python benchmarks/multilabel.py --asl-sweep                  # the asymmetric loss's settings

The sets (written once into data/multilabel-sets, each a folder of 96-px images and a label file
with a split column), from data that installed packages ship; no source image is in two splits:
- digits-ml: 1-3 of scikit-learn's 8x8 handwritten digits (10 classes), each scaled to 30-39 px,
  on a noisy grey canvas; the digits of val images are another fifth of each class's digits.
- objects-ml: 1-3 patches of 12 of scikit-image's photographs (a class each: astronaut, camera,
  cat, coffee, coins, moon, page, rocket, text, brick, hubble, cells), on a noisy canvas; each
  photograph is cut into a 3 x 3 grid of tiles, and val patches come from three of them (one in
  each row and column), train patches from the other six.

Per set and seed: `fit --data.label_file` with `configs/finetune.yaml --model.variant lite0
--model.weights imagenet` (8 epochs, 96 px) and with `configs/scratch.yaml --model.variant b0`
(15 epochs, 64 px: the recipe's size for 96-px images), crops of 80-100% of the canvas, each with `--model.multilabel_loss bce` and `asl`
(the asymmetric loss's settings as the module's defaults). Writes <out>/results.json after every run (a stopped benchmark resumes
from it) and prints the table: best val/map per run (median over seeds, worst, spread), the
label-prior baseline (every image scored by each class's training frequency: its mAP is the
mean share of val images holding each class), and the checks: the default loss within the
seed spread of the better one; fine-tuned Lite0 at mAP 0.9 or more on at least one set.

`--asl-sweep` chooses the asymmetric loss's defaults: fine-tuned Lite0, seed 1, on each set, at
each (gamma_neg, clip) of ASL_SWEEP (gamma_pos 0), into <out>/asl_sweep.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import finetune  # the digits' split is finetune.py's

SIZE = 96
# Lite0 at the canvas's size; B0 from scratch at 64 px, configs/scratch.yaml's size for 96-px images.
INITS = {
    "lite0 fine-tuned": (
        ["--config", "configs/finetune.yaml", "--model.variant", "lite0", "--model.weights", "imagenet"]
        + ["--data.image_size", str(SIZE)],
        8,
    ),
    "b0 from scratch": (["--config", "configs/scratch.yaml", "--model.variant", "b0", "--data.image_size", "64"], 15),
}
# Crops that keep most of the canvas: a label stays true of its crop (the recipes' 25% and 60%
# crops cut whole objects out while their labels stay on).
CROP = ["--data.crop_scale", "[0.8, 1.0]"]
LOSSES = ("bce", "asl")
DEFAULT_LOSS = "bce"  # EfficientNetModule's multilabel_loss default
ASL_SWEEP = [(gamma_neg, clip) for clip in (0.0, 0.05) for gamma_neg in (1, 2, 4)]
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "rocket", "text", "brick")
PHOTOS += ("hubble_deep_field", "cell")


def _canvas(rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.randrange(2**32)).normal(128, 18, (SIZE, SIZE, 3))
    return Image.fromarray(noise.clip(0, 255).astype(np.uint8))


def _compose(objects: list[Image.Image], rng: random.Random) -> Image.Image:
    """The objects pasted at random places on a noisy canvas, apart where 50 tries find room."""
    canvas, boxes = _canvas(rng), []
    for obj in objects:
        for _ in range(50):
            x, y = rng.randrange(0, SIZE - obj.width + 1), rng.randrange(0, SIZE - obj.height + 1)
            box = (x, y, x + obj.width, y + obj.height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                break
        boxes.append(box)
        canvas.paste(obj, (x, y))
    return canvas


def _digit_sources() -> dict[str, dict[int, list[Image.Image]]]:
    digits, indices = finetune.digit_split()  # the digits benchmark's split of the sources
    sources = {"train": {}, "val": {}}
    for c in range(10):
        train, val = indices[c]
        for split, chosen in (("val", val), ("train", train)):
            sources[split][c] = [
                Image.fromarray((255 - digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB") for i in chosen
            ]
    return sources


def _digit_object(source: Image.Image, rng: random.Random) -> Image.Image:
    side = rng.randrange(30, 40)
    return source.resize((side, side), Image.BILINEAR)


# Each photograph cut into a 3 x 3 grid of tiles: one tile in each row and column gives val patches,
# the other six train patches, so both splits see every part of the photograph and share no pixel.
GRID = 3
VAL_TILES = {(0, 0), (1, 2), (2, 1)}  # (row, column)


def tiles(width: int, height: int) -> dict[str, list[tuple[int, int, int, int]]]:
    """The boxes (left, top, right, bottom) of a photograph's GRID x GRID tiles, per split."""
    w, h = width // GRID, height // GRID
    boxes = {"train": [], "val": []}
    for row in range(GRID):
        for col in range(GRID):
            boxes["val" if (row, col) in VAL_TILES else "train"].append(
                (col * w, row * h, (col + 1) * w, (row + 1) * h)
            )
    return boxes


def _photo_sources() -> dict[str, dict[int, list[Image.Image]]]:
    from skimage import data

    sources = {"train": {}, "val": {}}
    for c, name in enumerate(PHOTOS):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        for split, boxes in tiles(photo.width, photo.height).items():
            sources[split][c] = [photo.crop(box) for box in boxes]
    return sources


def _photo_object(source: Image.Image, rng: random.Random) -> Image.Image:
    side = min(source.width, source.height, rng.randrange(60, 140))
    x, y = rng.randrange(0, source.width - side + 1), rng.randrange(0, source.height - side + 1)
    target = rng.randrange(33, 45)
    return source.crop((x, y, x + side, y + side)).resize((target, target), Image.BILINEAR)


SETS = {  # name: (the sources per split and class (a list each), one object from a source, the class names)
    "digits-ml": (_digit_sources, _digit_object, [str(d) for d in range(10)]),
    "objects-ml": (_photo_sources, _photo_object, list(PHOTOS)),
}
IMAGES = {"train": 800, "val": 300}


def build(name: str, data_dir: Path) -> Path:
    """The set's label file (images beside it), written once."""
    folder = data_dir / name
    label_file = folder / "labels.csv"
    if label_file.is_file():
        return label_file
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    make_sources, make_object, names = SETS[name]
    sources = make_sources()
    rows = []
    for split, count in IMAGES.items():
        rng = random.Random(f"{name}-{split}")
        for i in range(count):
            labels = sorted(rng.sample(range(len(names)), rng.randint(1, 3)))
            objects = []
            for c in labels:
                choices = sources[split][c]
                objects.append(make_object(choices[rng.randrange(len(choices))], rng))
            path = f"images/{split}-{i:04d}.png"
            _compose(objects, rng).save(folder / path)
            rows.append({"image": path, "labels": " ".join(names[c] for c in labels), "split": split})
    part = folder / "labels.csv.partial"
    with open(part, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    part.rename(label_file)
    return label_file


def prior_map(label_file: Path) -> float:
    """The label-prior baseline's mAP: each image scored by the classes' training frequencies (the
    same score for every image), so each class's AP is the share of val images holding it."""
    with open(label_file, newline="") as f:
        rows = list(csv.DictReader(f))
    val = [set(r["labels"].split()) for r in rows if r["split"] == "val"]
    classes = sorted({c for r in rows for c in r["labels"].split()})
    shares = [sum(c in labels for labels in val) / len(val) for c in classes if any(c in labels for labels in val)]
    return sum(shares) / len(shares)


def fit(label_file: Path, flags: list[str], seed: int, epochs: int, out: Path) -> float:
    """One `cli.py fit` into `out` (emptied first): its best val/map."""
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, str(ROOT / "cli.py"), "fit", *flags, "--data.label_file", str(label_file)]
    args += [*CROP, "--trainer.max_epochs", str(epochs), "--seed_everything", str(seed)]
    args += ["--trainer.logger", "CSVLogger", "--trainer.default_root_dir", str(out)]
    args += ["--trainer.enable_progress_bar", "false"]
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True, text=True)
    return float(json.loads((out / "latest_fit.json").read_text())["best_score"])


def asl_sweep(sets: list[str], out: Path) -> None:
    """Fit every ASL_SWEEP setting not yet in <out>/asl_sweep.json (each saved as it finishes)."""
    path = out / "asl_sweep.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    flags, epochs = INITS["lite0 fine-tuned"]
    for name in sets:
        label_file = build(name, ROOT / "data" / "multilabel-sets")
        for gamma_neg, clip in ASL_SWEEP:
            key = f"{name}: gamma_neg {gamma_neg}, clip {clip}"
            if key not in done:
                settings = ["--model.asl_gamma_neg", str(gamma_neg), "--model.asl_clip", str(clip)]
                run = ROOT / "data" / "multilabel-runs" / name / "sweep"
                done[key] = fit(label_file, [*flags, "--model.multilabel_loss", "asl", *settings], 1, epochs, run)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(done, indent=1))
            print(f"{key}: val/map {done[key]:.4f}", flush=True)


def summarise(results: dict) -> dict:
    """Per set and initialisation: each loss's median, worst and spread over the seeds both losses
    ran; whether the default loss is within the spread (the larger of the two) of the better."""
    summary = {}
    for name, result in results.items():
        rows = {}
        for init, losses in result.get("runs", {}).items():
            seeds = sorted(set.intersection(*(set(losses.get(loss, {})) for loss in LOSSES)))
            if not seeds:
                continue
            scores = {loss: [losses[loss][s] for s in seeds] for loss in LOSSES}
            medians = {loss: statistics.median(v) for loss, v in scores.items()}
            spread = max(max(v) - min(v) for v in scores.values())
            best = max(medians.values())
            rows[init] = {
                "seeds": seeds,
                "median": medians,
                "worst": {loss: min(v) for loss, v in scores.items()},
                "spread": spread,
                "default_holds": medians[DEFAULT_LOSS] >= best - spread,
            }
        summary[name] = {"prior_map": result.get("prior_map"), "inits": rows}
    fine = [
        row["inits"]["lite0 fine-tuned"]["median"] for row in summary.values() if "lite0 fine-tuned" in row["inits"]
    ]
    summary_checks = {"lite0_reaches_0.9": any(max(m.values()) >= 0.9 for m in fine)}
    return {"sets": summary, "checks": summary_checks}


def table(summary: dict) -> str:
    lines = [
        "| set | prior mAP | model | BCE: median (worst) | ASL: median (worst) | seed spread | default (BCE) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["sets"].items():
        for init, s in row["inits"].items():
            cells = [f"{s['median'][loss]:.3f} ({s['worst'][loss]:.3f})" for loss in LOSSES]
            verdict = "within the spread of the better" if s["default_holds"] else "**below the better**"
            lines.append(
                f"| {name} | {row['prior_map']:.3f} | {init} | {cells[0]} | {cells[1]} | {s['spread']:.3f} | {verdict} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "multilabel")
    parser.add_argument("--summary-only", type=Path, help="print the table of this folder's results.json")
    parser.add_argument("--asl-sweep", action="store_true", help="the asymmetric loss's settings (seed 1)")
    args = parser.parse_args(argv)
    if args.asl_sweep:
        asl_sweep(args.sets, args.out)
        return
    if args.summary_only:
        print(table(summarise(json.loads((args.summary_only / "results.json").read_text()))))
        return
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    work = ROOT / "data" / "multilabel-runs"
    for name in args.sets:
        label_file = build(name, ROOT / "data" / "multilabel-sets")
        result = results.setdefault(name, {})
        result["prior_map"] = prior_map(label_file)
        for seed in args.seeds:
            for init, (flags, epochs) in INITS.items():
                for loss in LOSSES:
                    done = result.setdefault("runs", {}).setdefault(init, {}).setdefault(loss, {})
                    if str(seed) in done:
                        continue
                    loss_flags = [*flags, "--model.multilabel_loss", loss]
                    done[str(seed)] = fit(label_file, loss_flags, seed, epochs, work / name / "run")
                    print(f"{name} {init} {loss} seed {seed}: val/map {done[str(seed)]:.4f}", flush=True)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(results, indent=1))
    summary = summarise(results)
    print(table(summary))
    print(f"fine-tuned Lite0 reaches mAP 0.9 on a set: {summary['checks']['lite0_reaches_0.9']}")


if __name__ == "__main__":
    main()
