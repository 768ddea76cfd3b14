"""Fixed-size against progressive training, side by side, seed by seed: val/acc against wall time.

    python benchmarks/progressive.py --seeds 3 [--out DIR] [-- FIT FLAGS]
    python benchmarks/progressive.py --seeds 3 -- --trainer.max_epochs 30 --data.image_size 96
    python benchmarks/progressive.py --configs fixed --eval-sizes 72 80 -- --config configs/finetune.yaml \
        --data.root DIR --model.variant lite0 --model.weights imagenet --data.image_size 64
    python benchmarks/progressive.py --plot-only DIR       # redraw DIR/curves.png from DIR/results.json

Each run is the real `python cli.py fit` with the flags after `--` (none: the demo job, B0 from
scratch with its own settings), once as it is and once with `--stages.count 4` (four stages
from half the size), alternating so that both see the same machine. Every run also validates at the extra
sizes of `--eval-sizes`, so the same runs measure evaluating above the training size. Writes
results.json (per epoch: wall seconds since the fit began, val/acc, val/acc@<size>), a summary
(median best val/acc with its spread, time to reach the fixed run's best, the gain of each
evaluation size) and curves.png (val/acc against wall time, every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"fixed": [], "progressive": ["--stages.count", "4"]}


class EpochClock(L.Callback):
    """Appends one JSON line per epoch to $CLOCK_FILE: wall seconds since the fit began and
    every val/ metric of that epoch."""

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/acc")}
        record = {"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self.start, **metrics}
        with open(os.environ["CLOCK_FILE"], "a") as f:
            f.write(json.dumps(record) + "\n")


def run(config: str, seed: int, args, work: Path) -> list[dict]:
    folder = work / f"{config}-seed{seed}"
    folder.mkdir(parents=True)
    clock = folder / "clock.jsonl"
    # After the user's flags, so that a --config among them does not set the seed back.
    cmd = [sys.executable, str(ROOT / "cli.py"), "fit", *args.fit_flags, "--seed_everything", str(seed)]
    cmd += [*CONFIGS[config], "--trainer.logger", "CSVLogger", "--trainer.enable_progress_bar", "false"]
    cmd += ["--trainer.callbacks+=progressive.EpochClock", "--data.extra_eval_sizes", json.dumps(args.eval_sizes)]
    env = {**os.environ, "CLOCK_FILE": str(clock), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    if "--data.root" not in args.fit_flags:
        os.symlink(ROOT / "data", folder / "data")  # the demo data, generated once
    done = subprocess.run(cmd, check=False, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{config} seed {seed} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in clock.read_text().splitlines()]


def time_to_reach(curve: list[dict], target: float) -> float | None:
    return next((r["seconds"] for r in curve if r["val/acc"] >= target - 1e-9), None)


def summarise(results: dict) -> dict:
    """Per config: best val/acc and wall time per seed; time to the same seed's fixed-size best;
    the gain of each extra evaluation size over val/acc at the last epoch."""
    summary = {}
    fixed_best = {seed: max(r["val/acc"] for r in curve) for seed, curve in results["fixed"].items()}
    for config, runs in results.items():
        best = {seed: max(r["val/acc"] for r in curve) for seed, curve in runs.items()}
        reach = {seed: time_to_reach(curve, fixed_best[seed]) for seed, curve in runs.items()}
        sizes = sorted({k for curve in runs.values() for k in curve[-1] if k.startswith("val/acc@")})
        summary[config] = {
            "best_val_acc": best,
            "median_best_val_acc": statistics.median(best.values()),
            "spread_best_val_acc": [min(best.values()), max(best.values())],
            "wall_seconds": {seed: curve[-1]["seconds"] for seed, curve in runs.items()},
            "seconds_to_fixed_best": reach,
            "eval_size_gain_last_epoch": {
                size: statistics.median(curve[-1][size] - curve[-1]["val/acc"] for curve in runs.values())
                for size in sizes
            },
            "eval_size_gain_best": {
                size: statistics.median(max(r[size] for r in curve) - best[seed] for seed, curve in runs.items())
                for size in sizes
            },
        }
    fixed, progressive = summary["fixed"], summary.get("progressive")
    if progressive:
        speedups = [
            fixed["seconds_to_fixed_best"][seed] / progressive["seconds_to_fixed_best"][seed]
            for seed in fixed["best_val_acc"]
            if progressive["seconds_to_fixed_best"][seed]
        ]
        progressive["speedup_to_fixed_best"] = speedups
        progressive["median_speedup_to_fixed_best"] = statistics.median(speedups) if speedups else None
    return summary


def plot(results: dict, path: Path):
    """val/acc against wall minutes, one line per run, one colour per config; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"fixed": "tab:blue", "progressive": "tab:orange"}
    for config, runs in results.items():
        for i, (seed, curve) in enumerate(sorted(runs.items())):
            ax.plot(
                [r["seconds"] / 60 for r in curve],
                [r["val/acc"] for r in curve],
                color=colours.get(config),
                alpha=0.8,
                label=config if i == 0 else None,
                gid=f"{config}-seed{seed}",
            )
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("val/acc")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-sizes", type=int, nargs="*", default=[72, 80])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot-only", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.fit_flags = [str(a) for a in argv[split + 1 :]]
    if args.plot_only:
        results = json.loads((args.plot_only / "results.json").read_text())["results"]
        plot(results, args.plot_only / "curves.png")
        return results
    out = args.out or Path(tempfile.mkdtemp(prefix="progressive-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {config: {} for config in args.configs}
    for seed in range(args.seeds):
        for config in args.configs:
            results[config][str(seed)] = run(config, seed, args, out / "runs")
            curve = results[config][str(seed)]
            print(
                f"{config} seed {seed}: best val/acc {max(r['val/acc'] for r in curve):.3f}, "
                f"{curve[-1]['seconds']:.0f} s",
                flush=True,
            )
    summary = summarise(results) if "fixed" in results else {}
    record = {"fit_flags": args.fit_flags, "results": results, "summary": summary}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    plot(results, out / "curves.png")
    print(json.dumps(summary, indent=1))
    print(f"results in {out}")
    return summary


if __name__ == "__main__":
    main()
