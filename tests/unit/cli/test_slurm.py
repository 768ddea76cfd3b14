"""The SLURM requeue: `scontrol requeue` once, from the first task, and what it says."""

import os

from effnet_lightning.cli.slurm import requeue_job


def test_requeue_runs_scontrol_once_from_the_first_task_and_says_what_happened(tmp_path, monkeypatch, capsys):
    tools = tmp_path / "bin"
    tools.mkdir()
    log = tmp_path / "scontrol.log"
    (tools / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n[ "$2" != 7 ] || {{ echo "Invalid job id" >&2; exit 1; }}\n'
    )
    (tools / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    requeue_job({})
    requeue_job({"SLURM_JOB_ID": "5", "SLURM_PROCID": "1"})  # another task of the job: leaves it to the first
    requeue_job({"SLURM_JOB_ID": "5", "SLURM_PROCID": "0"})
    requeue_job({"SLURM_JOB_ID": "7"})
    assert log.read_text().split("\n")[:-1] == ["requeue 5", "requeue 7"]
    assert capsys.readouterr().err.splitlines() == [
        "SIGUSR1: not a SLURM job, so nothing to requeue; resume with --ckpt_path last",
        "SIGUSR1: requeued SLURM job 5; it resumes from last.ckpt",
        "SIGUSR1: scontrol requeue 7 failed (Invalid job id); resubmit it with --ckpt_path last",
    ]
