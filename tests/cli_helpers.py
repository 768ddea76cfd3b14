"""Running the real command line from tests: `python cli.py ...` in a subprocess."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.image_size",
    "64",
    "--data.batch_size",
    "8",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
]
CSV = ["--trainer.logger", "CSVLogger"]  # the one flag that turns W&B off


def run_cli(args, cwd, check=True, env=None, timeout=900):
    env = {**(env if env is not None else os.environ), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        check=False,  # checked below, with the output in the message
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"cli.py {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        )
    return out


def printed_metric(output: str, name: str) -> float:
    match = re.search(rf"^\s*│?\s*{re.escape(name)}\s+│?\s*([0-9.]+)", output, re.MULTILINE)
    assert match, f"{name} not in output:\n{output[-2000:]}"
    return float(match.group(1))


def fit_summary(output: str) -> tuple[float, str]:
    """(best val/acc, its checkpoint) from the line fit prints at the end."""
    match = re.search(r"fit done: best val/acc ([0-9.]+) at (\S+),", output)
    assert match, f"no fit summary in:\n{output[-2000:]}"
    return float(match.group(1)), match.group(2)


def last_error_line(output) -> str:
    assert output.returncode == 2 and "Traceback" not in output.stderr, output.stderr[-3000:]
    return output.stderr.strip().splitlines()[-1]


def train_losses(cwd: Path, metric: str = "train/loss_step") -> dict[int, float]:
    """{step: training loss} (or another per-step `metric`) from every CSV log under cwd/runs."""
    values = {}
    for path in sorted((cwd / "runs").glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            values |= {int(r["step"]): float(r[metric]) for r in csv.DictReader(f) if r.get(metric)}
    return values
