"""SLURM preemption and time limits: one mechanism, the project's own.

A job submitted with `#SBATCH --signal=SIGUSR1@90` (configs/slurm.sbatch) gets SIGUSR1 90 s
before its end. `GracefulInterrupt` stops the fit at the next batch boundary and `last.ckpt`
is written, as for SIGTERM; then `requeue_job` puts the job back in the queue with
`scontrol requeue`, and the requeued job's `fit --ckpt_path last` resumes from that checkpoint,
in the same checkpoint folder and the same W&B run. Lightning's own SLURM requeue (which
writes `hpc_ckpt_*.ckpt` files of its own) is switched off, so the two never both handle the
signal.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

from effnet_lightning.console import say


def cluster_plugins(plugins: list) -> list:
    """The trainer's plugins, with SLURM's environment without Lightning's auto-requeue when
    the process runs under SLURM and no cluster environment was given."""
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        return [*plugins, SLURMEnvironment(auto_requeue=False)]
    return plugins


def requeue_job(environ: Mapping[str, str] | None = None) -> None:
    """After a fit stopped by SIGUSR1 and checkpointed: `scontrol requeue` this SLURM job, from
    its first task only. Outside SLURM it says so and does nothing more."""
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID")  # an array task's own id, too
    if not job:
        say("SIGUSR1: not a SLURM job, so nothing to requeue; resume with --ckpt_path last", err=True)
        return
    if environ.get("SLURM_PROCID", "0") != "0":
        return  # the first task requeues the whole job
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"SIGUSR1: could not requeue SLURM job {job} ({e}); resubmit it with --ckpt_path last", err=True)
        return
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        say(f"SIGUSR1: scontrol requeue {job} failed ({why[0]}); resubmit it with --ckpt_path last", err=True)
        return
    say(f"SIGUSR1: requeued SLURM job {job}; it resumes from last.ckpt", err=True)
