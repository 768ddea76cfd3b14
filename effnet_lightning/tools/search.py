"""Compound-scaling search, the paper's method as a command: fix phi (1 by default), try a grid
of depth / width / resolution bases (alpha, beta, gamma), keep the candidates whose measured
FLOPs are the budget (2x the baseline by default, the paper's alpha * beta^2 * gamma^2 ~= 2)
within a tolerance, train and validate each through the real `fit`, and report which is best
by the fits' checkpoint monitor (val/acc; val/map for multi-label data).

    python cli.py scale-search --config configs/default.yaml --epochs 4
    python cli.py scale-search --config configs/b0.yaml --alpha 1.1 1.2 1.3 --beta 1.0 1.1 1.2 \\
        --gamma 1.0 1.15 1.3 --budget 2 --workers 2 --devices 0 1 -- --data.root ~/images

Arguments after `--` go to every `fit`. The baseline is B0 at the base config's image size
(`data.image_size`; on the demo data the demo's, else 224); a candidate trains at that size x
gamma^phi, rounded to a multiple of 8. Grid points that build the same network (alpha 1.1 and
1.2 round B0's repeats to the same counts) train once. `--baseline-seeds` trains the baseline
once per seed, so the report can set the candidates' differences against its seed spread.
Finished candidates are cached in the output folder, so a re-run resumes where the last one
stopped. A stop signal (Ctrl+C, SIGTERM from `timeout` or a scheduler, SIGUSR1/SIGUSR2) is passed
on to the running fits, which stop at a batch boundary with their `last.ckpt`; the search then
exits with 128 + the signal, and the same command again resumes those fits from their
checkpoints and skips the finished ones. `--launcher slurm` submits each fit as its own SLURM
job through submitit (one job array; `--slurm-partition`, `--slurm-timeout-min`, `--slurm-gpus`, `--slurm-cpus`) and waits for
them, into the same cache and report. Then scale further with `--model.variant phi2_a<alpha>_b<beta>_g<gamma>`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import yaml

from effnet_lightning.data import demo
from effnet_lightning.models.scaling import ALPHA, BETA, GAMMA, from_phi, phi_name
from effnet_lightning.stop_signals import STOP_SIGNALS

DEFAULT_GRID = {"alpha": [1.1, 1.2, 1.3], "beta": [1.0, 1.1, 1.2], "gamma": [1.0, 1.15, 1.3]}


@dataclass
class Candidate:
    variant: str
    alpha: float
    beta: float
    gamma: float
    phi: float
    resolution: int
    params: int
    gmacs: float
    flops_ratio: float
    within_budget: bool
    score: float | None = None  # the fit's best checkpoint score
    wall_s: float | None = None
    # not run, trained, cached, failed, stopped, out of budget, same network as <variant>
    status: str = "not run"
    checkpoint: str | None = None
    seed: int | None = None
    metric: str | None = None  # what `score` is: the fits' monitor (val/map for multi-label data)
    mode: str = "max"  # the monitor's: max, higher is better; min (a loss), lower
    architecture: tuple = field(default=(), repr=False, compare=False)
    extra: dict = field(default_factory=dict)

    @property
    def constraint(self) -> float:
        return self.alpha * self.beta**2 * self.gamma**2


def scaled_resolution(base_resolution: int, gamma: float, phi: float) -> int:
    return max(8, round(base_resolution * gamma**phi / 8) * 8)


def measure(
    phi: float,
    alpha: float,
    beta: float,
    gamma: float,
    base_resolution: int,
    num_classes: int,
    baseline_gmacs: float | None,
    budget: float,
    tolerance: float,
) -> Candidate:
    """Build the candidate network and count its multiply-adds at its resolution."""
    from effnet_lightning.models.efficientnet import count_gmacs, count_parameters
    from effnet_lightning.models.factory import create_model

    variant = from_phi(phi, alpha, beta, gamma)
    resolution = scaled_resolution(base_resolution, gamma, phi)
    model = create_model(variant, num_classes=num_classes)
    gmacs = count_gmacs(model, resolution)
    ratio = gmacs / baseline_gmacs if baseline_gmacs else 1.0
    return Candidate(
        variant=variant.name,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        phi=phi,
        resolution=resolution,
        params=count_parameters(model),
        gmacs=gmacs,
        flops_ratio=ratio,
        within_budget=abs(ratio - budget) <= tolerance * budget,
        architecture=(resolution, *((name, tuple(t.shape)) for name, t in model.state_dict().items())),
    )


def base_resolution_of(config_files: list[str], fit_args: list[str] = ()) -> int:
    """data.image_size of the base configs (the last one setting it); without a data root
    anywhere the fits train on the demo data, at the demo's size; else B0's 224."""
    size, root = None, any(arg.split("=")[0] == "--data.root" for arg in fit_args)
    for path in config_files:
        data = (yaml.safe_load(Path(path).read_text()) or {}).get("data") or {}
        size, root = data.get("image_size", size), root or data.get("root") is not None
    return int(size or (224 if root else demo.FIT_SETTINGS["data"]["image_size"]))


@dataclass(frozen=True)
class SearchSpace:
    """The candidates: every (alpha, beta, gamma) of the grid at `phi`, kept when their FLOPs are
    `budget` x the baseline's within `tolerance` (a fraction of the budget)."""

    phi: float = 1.0
    alpha: tuple[float, ...] = tuple(DEFAULT_GRID["alpha"])
    beta: tuple[float, ...] = tuple(DEFAULT_GRID["beta"])
    gamma: tuple[float, ...] = tuple(DEFAULT_GRID["gamma"])
    budget: float = 2.0
    tolerance: float = 0.15

    def grid(self) -> list[tuple[float, float, float]]:
        return list(itertools.product(self.alpha, self.beta, self.gamma))


@dataclass(frozen=True)
class FitPlan:
    """How each network trains: `fit` with the base `configs`, then `fit_args`; `epochs` (None:
    the config's); the B0 baseline too unless `baseline` is False, once per seed of `seeds`
    (the candidates train with the first; None: the config's seed)."""

    configs: tuple[str, ...] = ()
    fit_args: tuple[str, ...] = ()
    epochs: int | None = None
    baseline: bool = True
    seeds: tuple[int | None, ...] = (None,)

    def command(self, candidate: Candidate, run_dir: Path) -> list[str]:
        command = [sys.executable, "-m", "effnet_lightning", "fit"]
        for path in self.configs:
            command += ["--config", str(path)]
        command += ["--model.variant", candidate.variant, "--data.image_size", str(candidate.resolution)]
        command += ["--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false"]
        if self.epochs is not None:
            command += ["--trainer.max_epochs", str(self.epochs)]
        if candidate.seed is not None:
            command += ["--seed_everything", str(candidate.seed)]
        return command + list(self.fit_args)

    def described(self) -> list[str]:
        """The arguments every candidate's fit shares, as the report shows them."""
        epochs = [f"--trainer.max_epochs {self.epochs}"] if self.epochs else []
        seed = [f"--seed_everything {self.seeds[0]}"] if self.seeds[0] is not None else []
        return [f"--config {p}" for p in self.configs] + epochs + seed + list(self.fit_args)


def load_cached(candidate: Candidate, command: list[str], run_dir: Path) -> bool:
    """Fill in the candidate's result from an earlier fit of the same command, if there was one."""
    result_file = run_dir / "result.json"
    if not result_file.exists():
        return False
    saved = json.loads(result_file.read_text())
    if saved.get("command") != command[1:]:  # the interpreter may differ between runs
        return False
    candidate.wall_s, candidate.checkpoint = saved["wall_s"], saved["checkpoint"]
    # Results saved before the score had a name were val/acc.
    candidate.score, candidate.metric = saved.get("score", saved.get("val_acc")), saved.get("metric", "val/acc")
    candidate.mode = saved.get("mode", "max")
    candidate.status = "cached"
    return True


class SearchStopped(Exception):
    """A stop signal ended the search; the running fits saved their checkpoints."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunningFits:
    """The fits this search runs on this machine, each in its own process group, and a stop
    signal passed on to them once: a terminal's Ctrl+C or a `kill` of the search's group then
    reaches each fit exactly once (a second Ctrl+C would stop a fit without its checkpoint),
    and no fit starts after it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stop_signal: int | None = None

    def run(self, command: list[str], log, env: dict) -> int | None:
        """The fit's exit status; None if the search was stopped before it started."""
        with self.lock:
            if self.stop_signal is not None:
                return None
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0)
            self.processes.add(process)
        try:
            return process.wait()
        finally:
            with self.lock:
                self.processes.discard(process)

    def stop(self, signum: int, frame=None) -> None:
        """The signal handler (main thread; the lock is only ever held by the fits' threads)."""
        if self.stop_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl+C: stop at once
                raise KeyboardInterrupt
            return
        print(
            f"scale-search: {signal.Signals(signum).name}: stopping the running fits at a batch boundary "
            "(each saves its last.ckpt)",
            flush=True,
        )
        with self.lock:
            self.stop_signal = signum
            for process in self.processes:
                process.send_signal(signum)

    def handling_stop_signals(self):
        """Install `stop` for the stop signals (main thread only); returns a function that puts
        the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {signum: signal.signal(signum, self.stop) for signum in STOP_SIGNALS}
        return lambda: [signal.signal(signum, handler) for signum, handler in previous.items()]


def fit_record(run_dir: Path) -> dict:
    """What the candidate's fit recorded in its default_root_dir (latest_fit.json); {} if nothing."""
    path = run_dir / "latest_fit.json"
    return json.loads(path.read_text()) if path.exists() else {}


def resume_args(run_dir: Path, command: list[str]) -> list[str]:
    """`--ckpt_path last` when the candidate's fit, started by this same command, stopped before
    its end with a checkpoint. Records the command of the fit about to start."""
    started = run_dir / "started.json"
    same = started.exists() and json.loads(started.read_text()) == command[1:]
    started.write_text(json.dumps(command[1:]))
    record = fit_record(run_dir)
    if same and not record.get("finished") and record.get("last_model_path"):
        return ["--ckpt_path", "last"]
    return []


def train(
    candidate: Candidate, command: list[str], run_dir: Path, device: str | None, fits: RunningFits | None = None
) -> Candidate:
    """Run `fit` for one candidate (cached: the same command again reuses the result; a fit
    stopped with a checkpoint resumes from it). `fits`: where the fit's process is kept, so a
    stop signal reaches it (None: a plain child process, as in a cluster job)."""
    if load_cached(candidate, command, run_dir):
        return candidate
    result_file = run_dir / "result.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resume_args(run_dir, command)
    package_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    start = time.perf_counter()
    with open(run_dir / "fit.log", "a" if resume else "w") as log:
        if fits is None:
            returncode = subprocess.run(
                command + resume, check=False, stdout=log, stderr=subprocess.STDOUT, env=env
            ).returncode
        else:
            returncode = fits.run(command + resume, log, env)
    if returncode is None:
        candidate.status = "not run"
        return candidate
    candidate.wall_s = round(time.perf_counter() - start, 1)
    record = fit_record(run_dir)
    if returncode - 128 in STOP_SIGNALS and not record.get("finished"):
        candidate.status = "stopped"
        return candidate
    if returncode != 0 or not record.get("finished") or record.get("best_score") is None:
        candidate.status = "failed"
        candidate.extra["log"] = str(run_dir / "fit.log")
        return candidate
    candidate.score, candidate.metric, candidate.checkpoint, candidate.status = (
        record["best_score"],
        record["monitor"],
        record["best_model_path"],
        "trained",
    )
    candidate.mode = record.get("mode") or "max"
    result_file.write_text(
        json.dumps(
            {
                "command": command[1:],
                "score": candidate.score,
                "metric": candidate.metric,
                "mode": candidate.mode,
                "wall_s": candidate.wall_s,
                "checkpoint": candidate.checkpoint,
            },
            indent=2,
        )
    )
    return candidate


def train_locally(commands: list[tuple[Candidate, list[str], Path]], workers: int, devices: list[str] | None):
    """Train on this machine, `workers` fits at a time (GPU ids from `devices` in turn); yields
    each candidate as it finishes. After a stop signal, raises SearchStopped once the running
    fits have saved their checkpoints."""
    slots: queue.Queue = queue.Queue()
    for i in range(max(1, workers)):
        slots.put(devices[i % len(devices)] if devices else None)
    fits = RunningFits()

    def run(job):
        candidate, command, run_dir = job
        device = slots.get()
        try:
            return train(candidate, command, run_dir, device, fits)
        finally:
            slots.put(device)

    restore = fits.handling_stop_signals()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for future in as_completed([pool.submit(run, job) for job in commands]):
                yield future.result()
    finally:
        restore()
    if fits.stop_signal is not None:
        raise SearchStopped(fits.stop_signal)


def slurm_executor(launcher: str, folder: Path, partition: str | None, timeout_min: int, gpus: int, cpus: int):
    """A submitit executor that runs each candidate as its own SLURM job (`launcher` "slurm"),
    or as its own process on this machine through submitit's local executor ("submitit-local",
    the same path without a cluster); job scripts and logs go under `folder`."""
    try:
        import submitit
    except ImportError:
        raise ValueError(f"--launcher {launcher} needs submitit: pip install submitit") from None
    cluster = "slurm" if launcher == "slurm" else "local"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError(
            "--launcher slurm: no sbatch here; run scale-search on a SLURM login node, or use --launcher local"
        )
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    options = {"slurm_partition": partition} if partition else {}
    executor.update_parameters(
        name="scale-search", timeout_min=timeout_min, gpus_per_node=gpus, cpus_per_task=cpus, **options
    )
    return executor


def train_as_jobs(commands: list[tuple[Candidate, list[str], Path]], executor):
    """Submit every candidate not in the cache as its own job (one SLURM job array), wait, and
    yield each candidate as its job ends: results land in the same per-candidate cache as local
    training."""
    import submitit

    for candidate, command, run_dir in commands:
        if load_cached(candidate, command, run_dir):
            yield candidate
    commands = [(c, command, run_dir) for c, command, run_dir in commands if c.status != "cached"]
    if not commands:
        return
    # The jobs unpickle `train` from this package: they import it from where this process does.
    package_parent = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    with executor.batch():
        submitted = [(executor.submit(train, c, command, run_dir, None), c) for c, command, run_dir in commands]
    print(f"scale-search: submitted {len(submitted)} jobs ({', '.join(j.job_id for j, _ in submitted)})", flush=True)
    originals = {job.job_id: candidate for job, candidate in submitted}
    for job in submitit.helpers.as_completed([job for job, _ in submitted]):
        candidate = originals[job.job_id]
        try:
            vars(candidate).update(vars(job.result()))  # the job's copy, back into the report's candidate
        except Exception as e:  # the job itself died (time limit, node failure): its log says why
            candidate.status = "failed"
            candidate.extra["log"] = str(job.paths.stderr)
            candidate.extra["error"] = type(e).__name__
        yield candidate


def plot(path: Path, baselines: list[Candidate], candidates: list[Candidate], best: Candidate | None):
    """accuracy_vs_flops.png: one point per trained network, the baseline's seeds, the best
    circled; returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    done = [c for c in candidates if c.score is not None and not c.status.startswith("same network")]
    ax.scatter([c.gmacs for c in done], [c.score for c in done], color="tab:blue", label="candidates (phi = 1)")
    for c in done:  # grid points that built this same network share its point: alphas joined
        alphas = [t.alpha for t in candidates if t.architecture == c.architecture and t.score is not None]
        ax.annotate(
            f"{'/'.join(f'{a:g}' for a in alphas)}, {c.beta:g}, {c.gamma:g}",
            (c.gmacs, c.score),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    trained = [b for b in baselines if b.score is not None]
    if trained:
        label = "baseline (phi = 0)" + (f", {len(trained)} seeds" if len(trained) > 1 else "")
        ax.scatter([b.gmacs for b in trained], [b.score for b in trained], color="tab:gray", marker="s", label=label)
    if best is not None:
        ax.scatter([best.gmacs], [best.score], s=160, facecolors="none", edgecolors="tab:red", label="best")
    ax.set_xlabel("GMACs per image (measured)")
    ax.set_ylabel(f"best {metric_of(baselines + candidates)}")
    ax.set_title("compound-scaling search: labels are (alpha, beta, gamma)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def _baseline_line(settings: dict, baselines: list[Candidate]) -> tuple[str, float | None]:
    """The report's baseline sentence and the baseline's median score (None if untrained)."""
    line = f"Baseline: B0 at {settings['base_resolution']} px, {baselines[0].gmacs:.4f} GMACs"
    scores = sorted(b.score for b in baselines if b.score is not None)
    if not scores:
        return line + ".", None
    median = statistics.median(scores)
    if len(baselines) == 1:
        return line + f", {metric_of(baselines)} {median:.4f}.", median
    each = ", ".join(f"{b.score:.4f} (seed {b.seed})" for b in baselines if b.score is not None)
    return (
        line
        + f", {metric_of(baselines)} {each}: median {median:.4f}, seed spread (max - min) {scores[-1] - scores[0]:.4f}.",
        median,
    )


RESULT_COLUMNS = (
    "variant",
    "alpha",
    "beta",
    "gamma",
    "phi",
    "constraint",
    "resolution",
    "params",
    "gmacs",
    "flops_ratio",
    "within_budget",
    "status",
    "seed",
    "metric",
    "mode",
    "score",
    "wall_s",
    "checkpoint",
)


def write_results_csv(path: Path, candidates: list[Candidate]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for c in candidates:
            values = {
                **asdict(c),
                "constraint": round(c.constraint, 4),
                "gmacs": round(c.gmacs, 4),
                "flops_ratio": round(c.flops_ratio, 4),
            }
            writer.writerow([values[k] if values[k] is not None else "" for k in RESULT_COLUMNS])


def metric_of(candidates: list[Candidate]) -> str:
    """The scores' name: the fits' checkpoint monitor (val/acc unless the data is multi-label)."""
    return next((c.metric for c in candidates if c.metric), "val/acc")


def merit(c: Candidate) -> float:
    """The score, higher always better: a monitor with mode min (a loss) counts negated."""
    return -c.score if c.mode == "min" else c.score


def best_of(candidates: list[Candidate]) -> Candidate | None:
    """Best score; ties go to the cheaper network, then to the grid point that was trained."""
    trained = [c for c in candidates if c.score is not None]
    return max(trained, key=lambda c: (merit(c), -c.gmacs)) if trained else None


def candidate_table(candidates: list[Candidate], baseline_median: float | None) -> list[str]:
    """The report's table: one row per grid point, the best first."""
    lines = [
        (
            "| alpha | beta | gamma | alpha*beta^2*gamma^2 | res | params | GMACs | FLOPs ratio | "
            f"{metric_of(candidates)} | vs baseline | time |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted(candidates, key=lambda c: (c.score is None, -merit(c) if c.score is not None else 0, c.gmacs)):
        acc = f"{c.score:.4f}" if c.score is not None else c.status
        if c.status.startswith("same network"):
            acc += f" ({c.status})"
        versus = f"{c.score - baseline_median:+.4f}" if c.score is not None and baseline_median is not None else ""
        wall = f"{c.wall_s:.0f} s" if c.wall_s is not None else ""
        lines.append(
            f"| {c.alpha:g} | {c.beta:g} | {c.gamma:g} | {c.constraint:.3f} | {c.resolution} | {c.params:,} | "
            f"{c.gmacs:.4f} | {c.flops_ratio:.2f} | {acc} | {versus} | {wall} |"
        )
    return lines


def verdict(best: Candidate | None, baselines: list[Candidate], candidates: list[Candidate]) -> list[str]:
    """The best candidate and how to scale it further; with several baseline seeds, whether its
    lead over the next-best is beyond the baseline's seed spread."""
    if best is None:
        return ["No candidate finished training: see the fit.log files under candidates/."]
    best_line = (
        f"**Best: alpha = {best.alpha:g}, beta = {best.beta:g}, gamma = {best.gamma:g}** ({metric_of([best])} "
        f"{best.score:.4f} at {best.flops_ratio:.2f}x the baseline's FLOPs). Scale further with "
        f"`--model.variant {phi_name(2, best.alpha, best.beta, best.gamma)}` (phi = 2) and up."
    )
    lines = [best_line]
    scores = [b.score for b in baselines if b.score is not None]
    if len(scores) > 1:
        spread = max(scores) - min(scores)
        others = [c.score for c in candidates if c.score is not None and c is not best]
        gaps = sorted(abs(best.score - score) for score in others if score != best.score)  # best leads them all
        lead = gaps[0] if gaps else 0
        beyond = "within" if not gaps or gaps[0] <= spread else "beyond"
        lines += [
            "",
            (
                f"The baseline's seed spread is {spread:.4f}; the best leads the next-best distinct score by "
                f"{lead:.4f}, {beyond} that spread."
            ),
        ]
    return lines


def write_report(
    out: Path, settings: dict, baselines: list[Candidate], candidates: list[Candidate]
) -> Candidate | None:
    """results.csv, accuracy_vs_flops.png and report.md in out; returns the best candidate."""
    write_results_csv(out / "results.csv", baselines + candidates)
    best = best_of(candidates)
    plot(out / "accuracy_vs_flops.png", baselines, candidates, best)
    baseline_line, median = _baseline_line(settings, baselines)
    kept = len([c for c in candidates if c.within_budget])
    lines = [
        "# Compound-scaling search",
        "",
        baseline_line,
        (
            f"Candidates: phi = {settings['phi']:g}, FLOPs budget {settings['budget']:g}x the baseline within "
            f"{settings['tolerance']:.0%}; {kept} of {len(candidates)} grid points kept. Training per candidate: "
            f"`{' '.join(settings['fit'])}`."
        ),
        "",
        *candidate_table(candidates, median),
        "",
        *verdict(best, baselines, candidates),
        "",
        "![accuracy against FLOPs](accuracy_vs_flops.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return best


def measure_grid(space: SearchSpace, resolution: int, num_classes: int) -> tuple[Candidate, list[Candidate]]:
    """The baseline (B0 at `resolution`) and every grid point, measured; those out of budget
    marked so."""
    base = measure(0.0, ALPHA, BETA, GAMMA, resolution, num_classes, None, 1.0, 1.0)
    base.variant, base.within_budget = "b0", True
    candidates = [
        measure(space.phi, a, b, g, resolution, num_classes, base.gmacs, space.budget, space.tolerance)
        for a, b, g in space.grid()
    ]
    for c in candidates:
        if not c.within_budget:
            c.status = "out of budget"
    return base, candidates


def distinct_networks(candidates: list[Candidate]) -> dict[tuple, Candidate]:
    """The first grid point within budget of each distinct network (others build the same)."""
    distinct: dict[tuple, Candidate] = {}
    for c in candidates:
        if c.within_budget:
            distinct.setdefault(c.architecture, c)
    return distinct


def share_results(candidates: list[Candidate], distinct: dict[tuple, Candidate]) -> None:
    """Grid points that built an already trained network take its result."""
    for c in candidates:
        first = distinct.get(c.architecture)
        if c.within_budget and first is not c:
            c.score, c.metric, c.mode, c.checkpoint = first.score, first.metric, first.mode, first.checkpoint
            c.seed = first.seed
            c.status = f"same network as {first.variant}"


def run_fits(commands: list[tuple[Candidate, list[str], Path]], fits: Iterator[Candidate]) -> None:
    """Print each fit's result as it finishes, under a progress bar."""
    from tqdm import tqdm

    for c in tqdm(fits, total=len(commands), desc="candidates", unit="fit", file=sys.stdout):
        acc = f"{c.score:.4f}" if c.score is not None else "-"
        seed = f" (seed {c.seed})" if c.variant == "b0" and c.seed is not None else ""
        tqdm.write(
            f"  {c.variant}{seed}: {c.status}, {c.metric or 'score'} {acc}, {c.flops_ratio:.2f}x FLOPs", file=sys.stdout
        )


def search(
    space: SearchSpace,
    plan: FitPlan,
    output_dir: str,
    launch: Callable[[list], Iterator[Candidate]],
    base_resolution: int | None = None,
    num_classes: int = 1000,
) -> tuple[Candidate | None, list[Candidate]]:
    """Measure the grid, train the distinct candidates within budget (and the baseline), write
    the report; returns (best, every candidate). FLOPs are counted with a `num_classes` head.
    `launch` trains the fits: `train_locally` or, with a submitit executor, `train_as_jobs`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolution = base_resolution or base_resolution_of(list(plan.configs), list(plan.fit_args))
    base, candidates = measure_grid(space, resolution, num_classes)
    distinct = distinct_networks(candidates)
    for c in distinct.values():
        c.seed = plan.seeds[0]
    kept = [c.variant for c in candidates if c.within_budget]
    print(
        f"scale-search: baseline B0 at {resolution} px, {base.gmacs:.4f} GMACs; {len(kept)} of {len(candidates)} "
        f"candidates within {space.tolerance:.0%} of {space.budget:g}x: {', '.join(kept) or 'none'}"
        f" ({len(distinct)} distinct networks)",
        flush=True,
    )
    baselines = [replace(base, seed=s, extra={}) for s in plan.seeds]
    jobs = [(b, out / "candidates" / ("baseline" if b.seed is None else f"baseline_seed{b.seed}")) for b in baselines]
    jobs = (jobs if plan.baseline else []) + [(c, out / "candidates" / c.variant) for c in distinct.values()]
    commands = [(c, plan.command(c, run_dir), run_dir) for c, run_dir in jobs]
    run_fits(commands, launch(commands))
    share_results(candidates, distinct)
    settings = {**asdict(space), "base_resolution": resolution, "fit": plan.described()}
    best = write_report(out, settings, baselines if plan.baseline else [base], candidates)
    print(f"scale-search: report in {out / 'report.md'}, {out / 'results.csv'}, {out / 'accuracy_vs_flops.png'}")
    if best is not None:
        print(
            f"scale-search: best alpha={best.alpha:g} beta={best.beta:g} gamma={best.gamma:g}, {metric_of([best])} "
            f"{best.score:.4f} at {best.flops_ratio:.2f}x the baseline's FLOPs"
        )
    return best, candidates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python cli.py scale-search",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to every fit (e.g. -- --data.root DIR).",
    )
    parser.add_argument("--config", action="append", default=[], help="base fit config (repeatable)")
    parser.add_argument("--phi", type=float, default=1.0, help="compound coefficient of every candidate (1)")
    grid = parser.add_argument_group("grid")
    for name in ("alpha", "beta", "gamma"):
        grid.add_argument(
            f"--{name}",
            type=float,
            nargs="+",
            default=DEFAULT_GRID[name],
            help=f"bases to try (default {' '.join(map(str, DEFAULT_GRID[name]))})",
        )
    parser.add_argument("--budget", type=float, default=2.0, help="candidate FLOPs / baseline FLOPs (2)")
    parser.add_argument("--tolerance", type=float, default=0.15, help="keep |ratio - budget| <= tolerance x budget")
    parser.add_argument("--epochs", type=int, default=None, help="max_epochs of every fit (default: the config's)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="do not train B0 for reference")
    parser.add_argument(
        "--baseline-seeds",
        type=int,
        nargs="+",
        default=None,
        help="train the baseline once per seed (its spread goes in the report); candidates use the first",
    )
    parser.add_argument("--workers", type=int, default=1, help="candidates trained at the same time (1)")
    parser.add_argument("--devices", nargs="+", default=None, help="GPU ids, given to the workers in turn")
    parser.add_argument(
        "--base-resolution",
        type=int,
        default=None,
        help="default: the config's data.image_size, else the demo's or 224",
    )
    parser.add_argument("--output-dir", default="runs/scale_search")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: --workers fits at a time on this machine (default); slurm: each candidate its own SLURM job, "
        "through submitit; submitit-local: the same jobs as processes on this machine",
    )
    cluster.add_argument("--slurm-partition", default=None, help="the jobs' partition (default: the cluster's)")
    cluster.add_argument("--slurm-timeout-min", type=int, default=240, help="each job's time limit, minutes (240)")
    cluster.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per job (1)")
    cluster.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per job (8)")
    return parser


# Settings each candidate's fit gets from the search, which the user must not give after --.
PER_CANDIDATE = ("--model.variant", "--data.image_size", "--trainer.default_root_dir", "--config", "-c", "--ckpt_path")


def check_arguments(args: argparse.Namespace, fit_args: list[str]) -> None:
    """One-line errors for settings the search owns, missing configs and impossible numbers."""
    owned = (
        PER_CANDIDATE
        + (("--trainer.max_epochs",) if args.epochs is not None else ())
        + (("--seed_everything",) if args.baseline_seeds else ())
    )
    for arg in fit_args:
        if arg.split("=")[0] in owned:
            raise ValueError(
                f"{arg.split('=')[0]} is set per candidate by the search: leave it out of the fit "
                f"arguments (base configs go before --; the base size is --base-resolution or the "
                f"config's data.image_size)"
            )
    for path in args.config:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
    if args.budget <= 0 or not 0 < args.tolerance < 1 or args.workers < 1:
        raise ValueError("need --budget > 0, 0 < --tolerance < 1 and --workers >= 1")


def launcher(args: argparse.Namespace) -> Callable[[list], Iterator[Candidate]]:
    """Where the fits run: this machine, `--workers` at a time, or one submitit job each."""
    if args.launcher == "local":
        return partial(train_locally, workers=args.workers, devices=args.devices)
    folder = Path(args.output_dir) / "jobs"
    executor = slurm_executor(
        args.launcher, folder, args.slurm_partition, args.slurm_timeout_min, args.slurm_gpus, args.slurm_cpus
    )
    return partial(train_as_jobs, executor=executor)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(own)
    check_arguments(args, fit_args)
    space = SearchSpace(args.phi, tuple(args.alpha), tuple(args.beta), tuple(args.gamma), args.budget, args.tolerance)
    seeds = tuple(args.baseline_seeds) if args.baseline_seeds else (None,)
    plan = FitPlan(tuple(args.config), tuple(fit_args), args.epochs, args.baseline, seeds)
    try:
        search(space, plan, args.output_dir, launcher(args), args.base_resolution)
    except SearchStopped as stopped:
        print(f"scale-search: stopped by {stopped}; run the same command again to resume", flush=True)
        sys.exit(128 + stopped.signum)
