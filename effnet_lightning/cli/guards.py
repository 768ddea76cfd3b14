"""What keeps a long run safe: checkpoints written atomically, a clean stop with a checkpoint on
SIGTERM / SIGUSR1 / Ctrl+C, resumes that continue the random streams, a stop at the first NaN or Inf
loss, and a multi-process job that ends when one of its processes dies.

The CLI adds all of these to every run (`--interrupt`, `--rng_state`, `--nonfinite`,
`--watchdog` in `python cli.py fit --help`); `AtomicCheckpointIO` is the trainer's default.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from effnet_lightning.cli.console import say
from effnet_lightning.compat import request_stop


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, flushes it to disk, then
    renames it over the target: a crash or a full disk mid-write leaves the previous file
    (e.g. `last.ckpt`) whole and loadable."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f), binary=True)


def write_atomically(path: Path, write, binary: bool = False) -> None:
    """Call write(file) on a temporary file next to `path`, flush it to disk, then move it into
    place: readers see the old content or the new one, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # the rename itself survives a power cut once the folder is flushed
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system flushes folders


_received_signal: int | None = None


def received_signal() -> int | None:
    """The signal that stopped the last fit of this process (None: none did)."""
    return _received_signal


class GracefulInterrupt(L.Callback):
    """SIGTERM (a scheduler's preemption, `kill`), SIGUSR1 (SLURM's warning before a time limit,
    see `slurm.py`) and the first Ctrl+C stop a fit at the next batch boundary; the checkpoint
    callback then writes `last.ckpt` and the process exits with 128 + the signal number (after
    SIGUSR1, once the job is requeued). A second Ctrl+C stops at once, without a checkpoint.

    Lightning already turns SIGTERM into a stop at a batch boundary, agreed across processes;
    this routes Ctrl+C and SIGUSR1 the same way instead of raising KeyboardInterrupt mid-step."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module):
        global _received_signal
        _received_signal = None
        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def on_signal(signum, frame):
            global _received_signal
            first = _received_signal is None
            _received_signal = _received_signal or signum
            if signum == signal.SIGINT and not first:
                raise KeyboardInterrupt
            if signum in (signal.SIGINT, signal.SIGUSR1):
                # Lightning's own SIGTERM path: Ctrl+C and SIGUSR1 stop the way SIGTERM does.
                request_stop(trainer)
                if signum == signal.SIGINT:
                    say(
                        "Ctrl+C: stopping after this batch and saving a checkpoint (press again to stop at once)",
                        err=True,
                    )
                elif first:
                    say("SIGUSR1: stopping after this batch, saving a checkpoint and requeueing the job", err=True)
            elif callable(lightning_sigterm):
                lightning_sigterm(signum, frame)

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, on_signal)

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def on_fit_end(self, trainer, pl_module):
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class ResumableRNG(L.Callback):
    """Saves the random number generators (torch, CUDA, NumPy, Python) in every checkpoint and
    restores them when a fit resumes: a run stopped at an epoch boundary and resumed shuffles,
    augments and drops out exactly as the uninterrupted run."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning reads callback states after building the model and before it first draws
        # training data (already while counting the steps for the scheduler): from here the
        # draws follow the uninterrupted run's.
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the message names the step and the checkpoint kept."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops a fit at the first step whose training loss is NaN or Inf on any process, before
    anything is saved from the broken weights: the last checkpoint written stays the last good
    one.

    Args:
        enabled: check every step (one tiny all-reduce per step under DDP).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.enabled:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        value = float(loss.detach().float().sum()) if bad else "finite here, not finite on another process"
        raise NonFiniteLossError(
            f"the training loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}): training "
            f"stopped and nothing was saved from these weights; {kept}. Lower --model.lr, set "
            f"--trainer.gradient_clip_val, or check the data, then resume with --ckpt_path last"
        )


class ProcessWatchdog(L.Callback):
    """A multi-process job ends when its rank-0 process dies, within `poll_seconds`: every other
    process on the machine watches its parent (rank 0 when `cli.py` launched the job, else
    torchrun's agent) and exits when it is gone, instead of waiting in a collective for the
    process-group timeout (30 minutes by default; configs/ddp.yaml sets 10). The other way
    round, Lightning's launcher already ends the job when a child process dies.

    Args:
        poll_seconds: how often to check.
    """

    def __init__(self, poll_seconds: float = 1.0, enabled: bool = True):
        self.poll_seconds, self.enabled = poll_seconds, enabled
        self._stop = threading.Event()

    def setup(self, trainer, pl_module, stage):
        if trainer.world_size > 1 and trainer.local_rank > 0:
            self._stop.clear()
            threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()

    def teardown(self, trainer, pl_module, stage):
        self._stop.set()

    def _watch_parent(self, parent: int) -> None:
        while not self._stop.wait(self.poll_seconds):
            if os.getppid() != parent:
                print(
                    f"error: the job's main process ({parent}) is gone: ending this process too",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
