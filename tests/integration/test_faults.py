"""Faults injected into real runs: bad image files, bad arguments, SIGTERM and Ctrl+C, a crash
while a checkpoint is written, pickled code in a weights file, a NaN loss, and a process of a
DDP job dying. Each test checks its row of docs/faults.md (see tests/helpers/fault_doc.py)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning
import pytest
import torch

from effnet_lightning.training.module import EfficientNetModule
from tests.helpers import wandb_offline
from tests.helpers.cli import CSV, ROOT, TINY, last_error_line, run_cli, run_main, train_losses
from tests.helpers.fault_doc import expect, rows
from tests.helpers.probes import state_sums as sums

# 4 optimizer steps per epoch, 2 validation batches: small and quick, every path still taken.
SHORT = [*TINY, *CSV, "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]


def every_checkpoint_loads_weights_only(folder: Path) -> int:
    paths = sorted(folder.rglob("*.ckpt"))
    for path in paths:
        torch.load(path, weights_only=True)
    return len(paths)


def record(cwd: Path) -> dict:
    return json.loads((cwd / "runs" / "latest_fit.json").read_text())


def probe_env(**values) -> dict:
    return {**os.environ, **{f"PROBE_{k.upper()}": str(v) for k, v in values.items()}}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of 10 classes named c0-c9 (not the demo's)."""
    module = EfficientNetModule("b0", num_classes=10, class_names=[f"c{i}" for i in range(10)])
    path = tmp_path_factory.mktemp("ckpt") / "ten.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "effnet",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


CRASHING_WRITER = """
import sys, torch
from effnet_lightning.callbacks.atomic import AtomicCheckpointIO
# ~400 MB: the write takes long enough to be killed in the middle of it
AtomicCheckpointIO().save_checkpoint({"step": 2, "big": torch.ones(100_000_000)}, sys.argv[1])
"""


def test_every_documented_fault_is_exercised_by_a_test():
    # expect("id", ...) calls, and the ids of the bad-argument table below
    pattern = re.compile(r'^\s*(?:expect\(\s*"([a-z0-9-]+)"|"(arg-[a-z0-9-]+)": \()', re.MULTILINE)
    sources = [path.read_text() for path in Path(__file__).parents[1].rglob("test_*.py")]
    checked = {m.group(1) or m.group(2) for text in sources for m in pattern.finditer(text)}
    documented = set(rows())
    assert documented == checked, (
        f"documented, not tested: {documented - checked}; tested, not documented: {checked - documented}"
    )


@pytest.mark.slow
def test_fit_on_a_folder_of_bad_files_skips_them_and_strict_mode_stops(bad_folder, tmp_path):
    root, kinds = bad_folder
    args = [
        "fit",
        "--data.root",
        root,
        *SHORT,
        "--data.val_fraction",
        "0.25",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1.0",
        "--trainer.limit_val_batches",
        "1.0",
    ]
    out = run_cli(args, tmp_path)
    n_bad = len(kinds) - 1  # the truncated JPEG reads as an image until decoded
    assert f"skipping {n_bad} of {3 * 6 + 5 + n_bad} files that are not readable images:" in out.stderr
    for kind, name in kinds.items():
        if kind != "truncated":
            assert str(root / "ant" / name) in out.stderr
    assert f"skipping unreadable image {root / 'ant' / 'truncated.jpg'} (OSError: image file is truncated" in out.stderr
    assert "fit done: best val/acc" in out.stdout
    expect(
        "data-bad-files",
        "skipping 3 of 26 files that are not readable images:",
        "empty file",
        "not an image PIL can read",
        "FileNotFoundError: [Errno 2] No such file or directory",
    )
    expect("data-truncated", "skipping unreadable image <data>/ant/truncated.jpg (OSError: image file is truncated")
    expect("data-odd-modes", "fit done: best val/acc")

    line = last_error_line(run_cli([*args, "--data.strict", "true"], tmp_path, check=False))
    assert line.startswith("error: 3 of 26 files are not readable images, e.g. ")
    expect(
        "data-strict", "error: 3 of 26 files are not readable images, e.g. <data>/ant/dangling.jpg (FileNotFoundError"
    )


@pytest.mark.slow
def test_predict_skips_unreadable_files_and_lists_them(bad_folder, tiny_checkpoint, tmp_path):
    root, kinds = bad_folder
    out = run_cli(
        ["predict", "--ckpt_path", tiny_checkpoint, "--data.predict_root", root / "ant", *TINY, *CSV], tmp_path
    )
    data = json.loads((tmp_path / "runs" / "predictions" / "predictions.json").read_text())
    skipped = {Path(p).name: why for p, why in data["skipped"].items()}
    assert skipped["truncated.jpg"] == "could not be decoded" and skipped["empty.jpg"] == "empty file"
    assert set(skipped) == set(kinds.values())
    predicted = sorted(Path(e["path"]).name for e in data["predictions"])
    assert predicted == sorted(["cmyk.jpg", "deep.png", "gray.png", "rgba.png", *[f"{i}.png" for i in range(6)]])
    assert (
        f"predict: 10 images, top-5 classes written to runs/predictions/predictions.csv and .json "
        f"({len(kinds)} unreadable files skipped: see 'skipped' in the .json)" in out.stdout
    )
    expect("predict-bad-files", "predict: 10 images", "unreadable files skipped: see 'skipped' in the .json")


def test_bad_arguments_give_one_line_errors(tmp_path, small_root, tiny_checkpoint, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.ckpt"
    data = tiny_checkpoint.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # what a crash mid-write leaves without atomic writes
    cases = {
        "arg-variant": (["fit", "--model.variant", "b9"], "error: unknown EfficientNet variant 'b9': choose one of b0"),
        "arg-root-missing": (
            ["fit", "--data.root", tmp_path / "nowhere"],
            "error: --data.root <tmp>/nowhere is not a folder: give a folder of class folders",
        ),
        "arg-root-empty": (
            ["fit", "--data.root", tmp_path / "empty"],
            "error: no class folders in <tmp>/empty: expected <tmp>/empty/<class>/<images>",
        ),
        "arg-batch-size": (["fit", "--data.batch_size", "0"], "error: batch_size must be positive, got 0"),
        "arg-image-size": (["fit", "--data.image_size", "-8"], "error: image_size must be positive, got -8"),
        "arg-classes": (
            ["test", "--data.root", small_root, "--ckpt_path", tiny_checkpoint],
            (
                "but the model was trained on ['c0', 'c1', 'c2', 'c3', 'c4', ... (10 in all)]: use a folder "
                "with the model's classes"
            ),
        ),
        "arg-ckpt-missing": (
            ["test", "--ckpt_path", tmp_path / "gone.ckpt"],
            "error: --ckpt_path <tmp>/gone.ckpt: no such checkpoint file",
        ),
        "arg-ckpt-corrupt": (
            ["fit", "--ckpt_path", corrupt],
            (
                "error: --ckpt_path <tmp>/corrupt.ckpt is not a readable checkpoint (RuntimeError): "
                "pick another file, e.g. the run's last.ckpt"
            ),
        ),
    }
    for fault, (args, message) in cases.items():
        root = [] if "--data.root" in args else ["--data.root", small_root]  # (not the demo data: no generating)
        code, line = run_main([*args, *root], capsys, monkeypatch, tmp_path)
        line = line.replace(str(tmp_path), "<tmp>")
        assert code == 2 and message in line, (fault, line)
        expect(fault, message)

    # No root and a checkpoint of other classes: refused before the demo data is generated into
    # ./data/demo (which may be inside the user's own data folder).
    for command in (["test"], ["export", "--formats", "[onnx_int8]"]):
        code, line = run_main([*command, "--ckpt_path", tiny_checkpoint], capsys, monkeypatch, tmp_path)
        assert code == 2 and line == (
            "error: the model was trained on ['c0', 'c1', 'c2', 'c3', 'c4', ... (10 in all)], not on the demo "
            "data: give a folder with its classes, --data.root DIR"
        ), line
        assert not (tmp_path / "data").exists()

    # A real process: one line and no traceback; EFFNET_DEBUG=1 shows where it came from.
    out = run_cli(["fit", "--data.batch_size", "0"], tmp_path, check=False)
    assert last_error_line(out) == "error: batch_size must be positive, got 0"
    out = run_cli(["fit", "--data.batch_size", "0"], tmp_path, check=False, env={**os.environ, "EFFNET_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "ValueError: batch_size must be positive" in out.stderr
    expect("arg-debug", "Traceback", "ValueError: batch_size must be positive, got 0")


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_last_resumes_the_exact_state(tmp_path, small_root):
    args = ["fit", "--data.root", small_root, *SHORT, "--ema.decay", "0.9", "--trainer.max_epochs", "3"]
    out = run_cli(
        [*args, "--trainer.callbacks+=tests.helpers.probes.SignalAtStep"],
        tmp_path,
        check=False,
        env=probe_env(step=6, signal="SIGTERM"),
    )
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-2000:]
    message = out.stdout.strip().splitlines()[-1]
    assert message == (
        "fit stopped by a signal at step 6 (epoch 1): saved runs/version_0/checkpoints/last.ckpt; "
        "resume with `python cli.py fit ... --ckpt_path last`"
    )
    expect("sigterm", "fit stopped by a signal at step 6 (epoch 1): saved runs/version_0/checkpoints/last.ckpt", "143")
    saved = torch.load(tmp_path / record(tmp_path)["last_model_path"], weights_only=True)
    assert saved["global_step"] == 6 and saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1

    probe_file = tmp_path / "resumed.json"
    run_cli(
        [*args, "--ckpt_path", "last", "--trainer.callbacks+=tests.helpers.probes.ResumeStateProbe"],
        tmp_path,
        env=probe_env(file=probe_file),
    )
    resumed = json.loads(probe_file.read_text())
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1
    assert resumed["checkpoint_io"] == "AtomicCheckpointIO"
    assert resumed["model"] == sums(saved["current_model_state"])  # the raw weights; state_dict holds the EMA
    assert resumed["ema"] == sums(saved["state_dict"]) and resumed["ema_n_averaged"] == 6
    optimizer = {str(k): sums(v) for k, v in saved["optimizer_states"][0]["state"].items()}
    assert resumed["optimizer"] == optimizer and len(optimizer) > 100
    scheduler = saved["lr_schedulers"][0]
    assert resumed["scheduler"] == {"last_epoch": scheduler["last_epoch"], "lr": scheduler["_last_lr"]}
    assert torch.load(tmp_path / record(tmp_path)["last_model_path"], weights_only=True)["global_step"] == 12
    n = every_checkpoint_loads_weights_only(tmp_path / "runs")
    expect("resume-state", "global step 6", "equal model, EMA, optimizer and scheduler tensors")
    expect("ckpt-weights-only", f"{n} checkpoints")


@pytest.mark.slow
def test_ctrl_c_stops_at_the_batch_boundary_and_saves(tmp_path, small_root):
    out = run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *SHORT,
            "--trainer.max_epochs",
            "2",
            "--trainer.callbacks+=tests.helpers.probes.SignalAtStep",
        ],
        tmp_path,
        check=False,
        env=probe_env(step=3, signal="SIGINT"),
    )
    assert out.returncode == 128 + signal.SIGINT, out.stderr[-2000:]
    assert "Ctrl+C: stopping after this batch and saving a checkpoint (press again to stop at once)" in out.stderr
    assert "fit stopped by a signal at step 3 (epoch 0): saved runs/version_0/checkpoints/last.ckpt" in out.stdout
    assert torch.load(tmp_path / record(tmp_path)["last_model_path"], weights_only=True)["global_step"] == 3
    expect("sigint", "Ctrl+C: stopping after this batch and saving a checkpoint", "130")


@pytest.mark.slow
def test_a_run_stopped_at_an_epoch_boundary_and_resumed_reproduces_the_uninterrupted_losses(tmp_path, small_root):
    # Random crops, flips, shuffling, dropout and stochastic depth all draw random numbers.
    args = ["fit", "--data.root", small_root, *SHORT, "--trainer.log_every_n_steps", "1", "--model.dropout", "0.3"]
    (tmp_path / "whole").mkdir()
    run_cli([*args, "--trainer.max_epochs", "2"], tmp_path / "whole")
    (tmp_path / "split").mkdir()
    first = run_cli([*args, "--trainer.max_epochs", "1", "--ckpt_path", "last"], tmp_path / "split")
    assert "--ckpt_path last: no checkpoint recorded in runs/latest_fit.json; starting fresh" in first.stderr
    expect("resume-nothing", "--ckpt_path last: no checkpoint recorded in runs/latest_fit.json; starting fresh")
    run_cli([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"], tmp_path / "split")
    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert sorted(whole) == sorted(split) == list(range(8))
    print(
        f"losses of the second epoch: uninterrupted {[whole[s] for s in range(4, 8)]}, "
        f"resumed {[split[s] for s in range(4, 8)]}"
    )
    assert [split[s] for s in range(8)] == pytest.approx([whole[s] for s in range(8)], abs=1e-6)
    assert len({round(whole[s], 4) for s in range(4, 8)}) == 4  # varied losses, not a constant
    expect("resume-reproduces", "the 4 losses of the second epoch equal the uninterrupted run's")


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, extra",
    [("0", []), ("2", ["--data.mixup_alpha", "0.4", "--data.cutmix_alpha", "1.0", "--data.weighted_sampler", "true"])],
)
def test_a_run_stopped_mid_epoch_by_sigterm_resumes_with_the_uninterrupted_runs_batches(
    tmp_path, small_root, workers, extra
):
    """The training loader's position is in the checkpoint: stopped at step 6 of a 12-step
    epoch and resumed, every later step has the uninterrupted run's loss (random crops, flips,
    dropout; with two loader workers also MixUp / CutMix and the weighted sampler)."""
    args = ["fit", "--data.root", small_root, *TINY, *CSV, "--data.num_workers", workers, *extra]
    args += ["--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1", "--model.dropout", "0.3"]
    args += ["--trainer.max_epochs", "2"]
    (tmp_path / "whole").mkdir()
    run_cli(args, tmp_path / "whole")
    (tmp_path / "split").mkdir()
    stopped = run_cli(
        [*args, "--trainer.callbacks+=tests.helpers.probes.SignalAtStep"],
        tmp_path / "split",
        check=False,
        env=probe_env(step=6, signal="SIGTERM"),
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    resumed = run_cli([*args, "--ckpt_path", "last"], tmp_path / "split")
    assert "not resumable" not in resumed.stderr
    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert sorted(whole) == sorted(split) == list(range(24))  # 100 images, batches of 8: 12 steps an epoch
    print(f"steps 6-11: uninterrupted {[whole[s] for s in range(6, 12)]}, resumed {[split[s] for s in range(6, 12)]}")
    assert [split[s] for s in range(24)] == pytest.approx([whole[s] for s in range(24)], abs=1e-6)
    assert len({round(whole[s], 4) for s in range(6, 24)}) == 18  # varied losses, not a constant
    expect("resume-mid-epoch", "all 18 losses after the stop equal the uninterrupted run's")


@pytest.mark.slow
def test_slurm_sigusr1_checkpoints_requeues_the_job_and_the_requeued_job_logs_on_into_the_same_wandb_run(
    tmp_path, small_root
):
    """What configs/slurm.sbatch runs, as SLURM would run it (only `scontrol` is replaced, by a
    script that records its arguments): SIGUSR1 at step 3 stops the fit with last.ckpt, the job
    is requeued, and the requeued job resumes at step 3 in the same checkpoint folder and W&B run."""
    script = (ROOT / "configs" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in script and "#SBATCH --requeue" in script
    assert re.search(r"^srun python cli.py fit .*--ckpt_path last$", script.replace("\\\n", ""), re.MULTILINE)
    assert subprocess.run(["bash", "-n", str(ROOT / "configs" / "slurm.sbatch")], check=False).returncode == 0
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (tools / "scontrol").chmod(0o755)
    env = {**os.environ, **SLURM_JOB, "WANDB_MODE": "offline", "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
    env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
    args = ["fit", "--data.root", small_root, *TINY, "--trainer.limit_train_batches", "4"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    args += ["--ckpt_path", "last"]
    job = tmp_path / "job"
    job.mkdir()
    first = run_cli(
        [*args, "--trainer.callbacks+=tests.helpers.probes.SignalAtStep"],
        job,
        check=False,
        env={**env, "PROBE_STEP": "3", "PROBE_SIGNAL": "SIGUSR1"},
    )
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-2000:]
    assert "SIGUSR1: stopping after this batch, saving a checkpoint and requeueing the job" in first.stderr
    assert "SIGUSR1: requeued SLURM job 4242; it resumes from last.ckpt" in first.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert not list(job.rglob("hpc_ckpt*"))  # Lightning's own requeue stayed off
    last = job / record(job)["last_model_path"]
    saved = torch.load(last, weights_only=True)
    (wandb_file,) = (job / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    run_id = wandb_file.stem.removeprefix("run-")
    assert saved["global_step"] == 3 and saved["wandb_run"] == {"id": run_id, "project": "effnet-lightning"}

    requeued = run_cli(args, job, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert f"W&B: resuming run {run_id} of the checkpoint" in requeued.stdout + requeued.stderr
    assert job / record(job)["last_model_path"] == last  # the same checkpoint folder
    assert torch.load(last, weights_only=True)["global_step"] == 8
    runs = sorted((job / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [r.stem for r in runs] == [f"run-{run_id}"] * 2  # one W&B run, logged to by both jobs
    steps = [h["trainer/global_step"] for h in wandb_offline.history(runs[1]) if "train/loss_step" in h]
    assert steps and min(steps) >= 3 and max(steps) >= 7
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # finished: not requeued again
    print(f"W&B run {run_id}: the requeued job logged steps {min(steps)}-{max(steps)}")
    expect("slurm-requeue", "SIGUSR1: requeued SLURM job 4242", "scontrol requeue 4242", "138", "W&B: resuming run")


def group_args(root, workers: str) -> list:
    """A 2-epoch run of 4 steps an epoch, every step's loss logged, with `workers` loader workers."""
    args = ["fit", "--data.root", root, *SHORT, "--data.num_workers", workers, "--trainer.max_epochs", "2"]
    return [*args, "--trainer.log_every_n_steps", "1", "--model.dropout", "0.3"]


@pytest.fixture(scope="module")
def uninterrupted_losses(small_root, tmp_path_factory):
    """{num_workers: per-step losses of the uninterrupted run}, each run once for the module."""
    runs = {}

    def losses(workers: str) -> dict[int, float]:
        if workers not in runs:
            cwd = tmp_path_factory.mktemp(f"whole{workers}")
            run_cli(group_args(small_root, workers), cwd)
            runs[workers] = train_losses(cwd)
        return runs[workers]

    return losses


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_signal_to_the_whole_process_group_stops_at_a_batch_boundary_and_resumes(
    tmp_path, small_root, uninterrupted_losses, name, workers
):
    """`timeout`, systemd and SLURM signal the whole process group, loader workers included: the
    workers leave the signal to the main process, which stops at the batch boundary with
    last.ckpt and exits with 128 + the signal; the resumed run has the uninterrupted run's losses."""
    signum = getattr(signal, name)
    args = group_args(small_root, workers)
    env = probe_env(step=3, signal=name)
    if signum == signal.SIGUSR1:
        tools = tmp_path / "bin"
        tools.mkdir()
        (tools / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
        (tools / "scontrol").chmod(0o755)
        env = {**env, **SLURM_JOB, "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
    job = tmp_path / "job"
    job.mkdir()
    stopped = run_cli([*args, "--trainer.callbacks+=tests.helpers.probes.GroupSignalAtStep"], job, check=False, env=env)
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and "killed by signal" not in stopped.stderr, stopped.stderr[-2000:]
    assert "fit stopped by a signal at step 3 (epoch 0): saved runs/version_0/checkpoints/last.ckpt" in stopped.stdout
    assert torch.load(job / record(job)["last_model_path"], weights_only=True)["global_step"] == 3
    if signum == signal.SIGUSR1:
        assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    resumed = run_cli([*args, "--ckpt_path", "last"], job)
    assert "not resumable" not in resumed.stderr
    whole, split = uninterrupted_losses(workers), train_losses(job)
    assert sorted(whole) == sorted(split) == list(range(8))
    assert [split[s] for s in range(8)] == pytest.approx([whole[s] for s in range(8)], abs=1e-6)
    print(f"{name}, {workers} workers: exit {stopped.returncode}, steps 3-7 {[split[s] for s in range(3, 8)]}")
    seen = ("fit stopped by a signal at step 3 (epoch 0)", str(128 + signum), "the 5 losses after the stop")
    if signum == signal.SIGINT:
        expect("group-sigint", *seen)
    elif signum == signal.SIGTERM:
        expect("group-sigterm", *seen)
    else:
        expect("group-sigusr1", *seen, "requeue 4242")


@pytest.mark.slow
def test_sigterm_to_a_two_process_ddp_group_stops_both_ranks_at_one_step_and_resumes_mid_epoch(tmp_path, small_root):
    """Under DDP the signal reaches both ranks (and their workers): both stop at the step rank 0's
    flag names, one last.ckpt is written, and the resumed run, from the middle of an epoch, has
    the uninterrupted two-process run's losses."""
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    args = [*group_args(small_root, "1"), *ddp]
    whole = tmp_path / "whole"
    whole.mkdir()
    run_cli(args, whole)
    job = tmp_path / "job"
    job.mkdir()
    probe = "--trainer.callbacks+=tests.helpers.probes.GroupSignalAtStep"
    env = probe_env(step=3, signal="SIGTERM", file=tmp_path / "stopped")
    stopped = run_cli([*args, probe], job, check=False, env=env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and "killed by signal" not in stopped.stderr, stopped.stderr[-2000:]
    assert [(tmp_path / f"stopped.{rank}").read_text() for rank in (0, 1)] == ["3", "3"]
    assert stopped.stdout.count("fit stopped by a signal at step 3 (epoch 0)") == 1
    assert [p.name for p in job.rglob("*.ckpt")] == ["last.ckpt"]
    assert torch.load(job / record(job)["last_model_path"], weights_only=True)["global_step"] == 3
    run_cli([*args, "--ckpt_path", "last"], job)
    expected, split = train_losses(whole), train_losses(job)
    assert sorted(expected) == sorted(split) == list(range(8))
    print(f"2 processes, SIGTERM to the group at step 3: losses of steps 3-7 {[split[s] for s in range(3, 8)]}")
    assert [split[s] for s in range(8)] == pytest.approx([expected[s] for s in range(8)], abs=1e-6)
    expect("group-sigterm-ddp", "both ranks stopped at step 3", "one last.ckpt", "143")


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_whole(tmp_path):
    from effnet_lightning.callbacks.atomic import AtomicCheckpointIO

    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "weights": torch.arange(10.0)}, last)
    before = last.read_bytes()
    tmp = tmp_path / ".last.ckpt.tmp"
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(last)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    deadline = time.monotonic() + 120
    while not (tmp.exists() and tmp.stat().st_size > 1_000_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.kill()  # SIGKILL: no cleanup runs
    writer.wait()
    assert tmp.exists(), "the writer was not caught mid-write"
    assert last.read_bytes() == before
    loaded = torch.load(last, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.arange(10.0))
    expect("ckpt-crash", "last.ckpt unchanged and loads")


@pytest.mark.slow
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, small_root):
    out = run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *SHORT,
            "--trainer.max_epochs",
            "3",
            "--trainer.callbacks+=tests.helpers.probes.NaNAtStep",
        ],
        tmp_path,
        check=False,
        env=probe_env(step=5),
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: the training loss is nan at step 6 (epoch 1): training stopped and nothing was "
        "saved from these weights; the last good checkpoint is runs/version_0/checkpoints/last.ckpt"
    )
    last = torch.load(tmp_path / record(tmp_path)["last_model_path"], weights_only=True)
    assert last["global_step"] == 4  # the end of epoch 0, before the NaN
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    expect("nan-loss", "error: the training loss is nan at step 6 (epoch 1)", "global step 4")


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [1, 0])
def test_when_one_ddp_process_dies_the_whole_job_ends_promptly(failing_rank, tmp_path, small_root):
    # The surviving process works outside any collective for 5 minutes, so only the watchdogs
    # can end it early.
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    start = time.monotonic()
    out = run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *SHORT,
            *ddp,
            "--trainer.max_epochs",
            "2",
            "--trainer.callbacks+=tests.helpers.probes.FailOnRank",
        ],
        tmp_path,
        check=False,
        env=probe_env(rank=failing_rank, step=2, stall=300),
        timeout=280,
    )
    elapsed = time.monotonic() - start  # run_cli waits for every process holding the output open
    assert out.returncode != 0 and f"injected failure on rank {failing_rank}" in out.stderr
    print(f"rank {failing_rank} failed: the job ended after {elapsed:.0f} s (start-up included)")
    assert elapsed < 120
    if failing_rank == 1:
        assert "terminated with code 1. Forcefully terminating all other processes" in out.stderr
        expect("ddp-rank-dies", "Forcefully terminating all other processes")
    else:
        assert "error: the job's main process" in out.stderr and "is gone: ending this process too" in out.stderr
        expect("ddp-main-dies", "is gone: ending this process too")
