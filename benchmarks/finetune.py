"""Fine-tuning policies side by side on four small labelled image sets unlike ImageNet and unlike
the demo data: val/acc per epoch, seed by seed, each run the real `python cli.py fit`.

    python benchmarks/finetune.py                           # every set x policy, seeds 1 2 3
    python benchmarks/finetune.py --sets digits --policies default bn-trained --seeds 1
    python benchmarks/finetune.py --summary-only docs/finetune   # the table again, from results.json

The sets, built into data/finetune-sets on first use, deterministically, from data that installed
packages ship or that this script draws (nothing is downloaded):
- digits: scikit-learn's 1,797 handwritten digits (8 x 8 px, grayscale, 10 classes) scaled to
  32 px; a fifth of each class for validation (360 images).
- digits-imbalanced: the same validation images; training images per class falling from 140
  to 7 (x 0.72 from one class to the next).
- shapes-20: the demo's ten shape classes drawn with another seed, 20 training images per class
  (300 validation).
- textures: 48-px patches of eight grayscale images scikit-image ships (brick, grass, gravel,
  the moon's surface, a cell micrograph, a histology stain, a retina, a deep-field sky): training
  patches from the left 70% of each image, validation patches (40 per class) from the rest.

Every run: `fit --config configs/finetune.yaml --data.root SET --model.variant lite0
--model.weights imagenet --data.image_size 64 --trainer.max_epochs 5 --seed_everything S` and
the policy's flags. Writes <out>/results.json (val/acc per epoch per run) and prints, per set
and policy, the median val/acc of each epoch over the seeds (epoch 0 trains only the
classifier), each seed's last epoch, and the checks the defaults are held to.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from effnet_lightning.data import demo

POLICIES = {
    "default": [],  # configs/finetune.yaml as shipped
    "bn-trained": ["--model.freeze_bn", "false"],  # the old default
    "bn-trained-momentum-0.1": ["--model.freeze_bn", "false", "--model.model_options", '{"bn_momentum": 0.1}'],
    "layer-decay-0.7": ["--model.layer_lr_decay", "0.7"],
    "gradual-3": ["--model.unfreeze_groups_per_epoch", "3"],
}
RUN = ["--model.variant", "lite0", "--model.weights", "imagenet", "--data.image_size", "64"]
EPOCHS = 5
DONE = ".complete"


def _save_split(root: Path, split: str, images: dict[str, list[Image.Image]]) -> None:
    for label, items in images.items():
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(items):
            image.save(folder / f"{label}_{i:04d}.png")


def digit_split():
    """scikit-learn's digits and, per class, the indices of its training images and of its
    validation fifth (shuffled with the class as seed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    split = {}
    for c in range(10):
        idx = [i for i, t in enumerate(digits.target) if t == c]
        random.Random(c).shuffle(idx)
        n_val = round(len(idx) / 5)
        split[c] = (idx[n_val:], idx[:n_val])
    return digits, split


def _digits(imbalanced: bool) -> dict[str, dict[str, list[Image.Image]]]:
    digits, indices = digit_split()
    splits = {"train": {}, "val": {}}
    for c in range(10):
        train, val = indices[c]
        if imbalanced:
            train = train[: max(1, round(140 * 0.72**c))]
        for split, chosen in (("train", train), ("val", val)):
            splits[split][str(c)] = [
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
                for i in chosen
            ]
    return splits


def _shapes_few() -> dict[str, dict[str, list[Image.Image]]]:
    splits = {}
    for split, per_class, offset in (("train", 20, 0), ("val", 30, 50)):
        splits[split] = {}
        for c, label in enumerate(demo.CLASSES):
            rng = random.Random(7_000 + offset + c)  # not the demo data's seeds
            splits[split][label] = [demo.draw_shape(label, rng) for _ in range(per_class)]
    return splits


TEXTURES = ("brick", "grass", "gravel", "moon", "cell", "immunohistochemistry", "retina", "hubble_deep_field")


def texture_image(pixels, name: str) -> Image.Image:
    """One of skimage's images as the textures set uses it: grey, the retina without its black surround."""
    image = Image.fromarray(pixels).convert("L")
    if name == "retina":  # the fundus only, not the black surround
        w, h = image.size
        image = image.crop((w // 5, h // 5, w - w // 5, h - h // 5))
    return image


def _textures(patch: int = 48, train_per_class: int = 60, val_per_class: int = 40):
    from skimage import data

    splits = {"train": {}, "val": {}}
    for c, name in enumerate(TEXTURES):
        image = texture_image(getattr(data, name)(), name)
        w, h = image.size
        cut = int(w * 0.7)
        rng = random.Random(c)
        for split, (x0, x1), count in (("train", (0, cut), train_per_class), ("val", (cut, w), val_per_class)):
            patches = []
            for _ in range(count):
                x, y = rng.randrange(x0, x1 - patch), rng.randrange(0, h - patch)
                tile = image.crop((x, y, x + patch, y + patch)).rotate(90 * rng.randrange(4))
                patches.append(tile)
            splits[split][name] = patches
    return splits


SETS = {
    "digits": lambda: _digits(imbalanced=False),
    "digits-imbalanced": lambda: _digits(imbalanced=True),
    "shapes-20": _shapes_few,
    "textures": _textures,
}


def build(name: str, data_dir: Path) -> Path:
    """The set's image folder (root/train|val/<class>/*.png), written once."""
    root = data_dir / name
    if not (root / DONE).exists():
        for split, images in SETS[name]().items():
            _save_split(root, split, images)
        (root / DONE).write_text("")
    return root


def val_acc_per_epoch(run_dir: Path) -> list[float]:
    rows = csv.DictReader(next(run_dir.rglob("metrics.csv")).open())
    return [float(r["val/acc"]) for r in rows if r.get("val/acc")]


def run(root: Path, policy: str, seed: int, extra: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs" / "finetune.yaml")]
        args += ["--data.root", str(root), *RUN, "--trainer.max_epochs", str(EPOCHS), "--seed_everything", str(seed)]
        args += ["--trainer.logger", "CSVLogger", "--trainer.default_root_dir", out]
        args += ["--trainer.enable_progress_bar", "false", *POLICIES[policy], *extra]
        subprocess.run(args, check=True, cwd=out, stdout=subprocess.DEVNULL)
        return val_acc_per_epoch(Path(out))


def lead_over_default(policies: dict, policy: str) -> float:
    """How far `policy`'s last val/acc is above the default's (medians), on the seeds both ran
    (the default may have run more)."""
    default = policies["default"]
    common = [seed for seed in policies[policy] if seed in default]
    if not common:
        return float("-inf")
    theirs = statistics.median(policies[policy][seed][-1] for seed in common)
    return theirs - statistics.median(default[seed][-1] for seed in common)


def summarise(results: dict) -> dict:
    """Per set and policy: the median val/acc of each epoch over the seeds, each seed's last
    epoch and their spread; and the checks: the last epoch at least the classifier-only epoch
    (0) and within max(1 point, the seed spread) of the best epoch (medians), and the default's
    last epoch within max(1 point, the larger spread) of the best policy's, on the seeds both ran."""
    summary = {}
    for name, policies in results.items():
        rows = {}
        for policy, seeds in policies.items():
            curves = list(seeds.values())
            medians = [statistics.median(c[e] for c in curves) for e in range(min(map(len, curves)))]
            lasts = [c[-1] for c in curves]
            spread = max(lasts) - min(lasts)
            rows[policy] = {
                "median_by_epoch": medians,
                "last_by_seed": dict(zip(seeds, lasts)),
                "last": medians[-1],
                "spread": spread,
                "last_at_least_classifier_only": medians[-1] >= medians[0],
                "last_near_best_epoch": max(medians) - medians[-1] <= max(0.01, spread),
            }
        if "default" in rows:
            best = max(rows, key=lambda policy: lead_over_default(policies, policy))
            margin = max(0.01, rows["default"]["spread"], rows[best]["spread"])
            rows["default"]["best_policy"] = best
            rows["default"]["near_best_policy"] = lead_over_default(policies, best) <= margin
        summary[name] = rows
    return summary


def table(summary: dict) -> str:
    lines = [
        "| data | policy | val/acc by epoch (0: classifier only), median over seeds | last epoch, seed: val/acc | checks |",
        "|---|---|---|---|---|",
    ]
    for name, rows in summary.items():
        for policy, row in rows.items():
            checks = []
            if policy == "default":
                checks.append("last >= epoch 0" if row["last_at_least_classifier_only"] else "**last < epoch 0**")
                checks.append("last ~ best epoch" if row["last_near_best_epoch"] else "**last below best epoch**")
                near = row["near_best_policy"]
                checks.append(f"~ best policy ({row['best_policy']})" if near else f"**below {row['best_policy']}**")
            curve = ", ".join(f"{a:.3f}" for a in row["median_by_epoch"])
            seeds = ", ".join(f"{seed}: {a:.3f}" for seed, a in row["last_by_seed"].items())
            label = f"**{policy}**" if policy == "default" else policy
            lines.append(f"| {name} | {label} | {curve} | {seeds} | {'; '.join(checks)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "finetune")
    parser.add_argument("--summary-only", type=Path, help="print the table of this folder's results.json")
    parser.add_argument("fit_flags", nargs="*", help="after --: more flags for every fit")
    args = parser.parse_args(argv)
    if args.summary_only:
        print(table(summarise(json.loads((args.summary_only / "results.json").read_text()))))
        return
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.sets:
        root = build(name, ROOT / "data" / "finetune-sets")
        for seed in args.seeds:  # seed-major: a stopped run leaves whole seeds for every policy
            for policy in args.policies:
                seeds = results.setdefault(name, {}).setdefault(policy, {})
                if str(seed) in seeds:
                    continue
                seeds[str(seed)] = run(root, policy, seed, args.fit_flags)
                print(f"{name} {policy} seed {seed}: {seeds[str(seed)]}", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results, indent=1))
    print(table(summarise(results)))


if __name__ == "__main__":
    main()
