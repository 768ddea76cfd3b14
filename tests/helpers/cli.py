"""Running the real command line from tests: `python cli.py ...` in a process of its own (forked
from one that has imported the CLI, see `cli_server.py`), or in-process where only parsing is
tested."""

import csv
import functools
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from effnet_lightning.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
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


# Read when a library is imported (cache folders, kernel choices, threads): a command that sets
# them differently from the server's own environment runs in a fresh interpreter instead.
IMPORT_TIME = re.compile(r"^(HF_|HUGGINGFACE|ONEDNN|DNNL|ATEN_|TORCH|OMP_|MKL|KMP_|LITDATA|PYTHON|CUDA|HOME$|XDG_)")


class CliServer:
    """One `tests/helpers/cli_server.py` process for the session: each command runs in a child it
    forks, so the libraries are imported once instead of once per command."""

    def __init__(self):
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "helpers" / "cli_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "ready"

    def serves(self, env: dict) -> bool:
        changed = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k)}
        return self.process.poll() is None and not any(IMPORT_TIME.match(k) for k in changed)

    def run(self, args: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            command = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            pid = int(self.process.stdout.readline())
            try:
                ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            except BaseException:  # the test's own timeout: leave no command running behind it
                os.killpg(pid, signal.SIGKILL)
                self.process.stdout.readline()
                raise
            if not ready:
                os.killpg(pid, signal.SIGKILL)  # the command and its workers
            status = int(self.process.stdout.readline())
            if not ready:
                raise subprocess.TimeoutExpired(["cli.py", *args], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess(["cli.py", *args], status, out.read_text(), err.read_text())


@functools.cache
def cli_server() -> CliServer:
    return CliServer()


def run_cli(args, cwd, check=True, env=None, timeout=900):
    """`python cli.py ARGS` in `cwd`: its exit status and output, as subprocess.run gives them."""
    args = [*map(str, args)]
    env = {**(env if env is not None else os.environ), "PYTHONPATH": str(ROOT)}
    if cli_server().serves(env):
        out = cli_server().run(args, cwd, env, timeout)
    else:
        out = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args],
            check=False,  # checked below, with the output in the message
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if check and out.returncode != 0:
        raise AssertionError(
            f"cli.py {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
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


def run_main(args, capsys, monkeypatch, cwd) -> tuple[int, str]:
    """`cli.py ARGS` in-process: (exit status, last line of stderr)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args), *CSV])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return exit_info.value.code, err.splitlines()[-1]


def print_config(args, capsys, monkeypatch, cwd) -> str:
    """`cli.py ... --print_config`, in-process (parsing only: no training)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args), "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out
