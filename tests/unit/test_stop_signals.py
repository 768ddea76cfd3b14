import multiprocessing
import pickle
import re
import signal
import subprocess
import time
from pathlib import Path

from effnet_lightning.stop_signals import STOP_SIGNALS, LeavingStopSignals, leave_stop_signals_to_parent


def wait_for_stop_signals(ready) -> None:
    leave_stop_signals_to_parent()
    ready.set()
    time.sleep(60)


def test_a_child_ignores_stop_signals_from_others_and_leaves_at_its_parents_sigterm():
    """A scheduler's signals (sent by another process) leave the child running; the parent's
    own SIGTERM (multiprocessing's terminate, as at exit) ends it at once."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=wait_for_stop_signals, args=(ready,), daemon=True)
    child.start()
    try:
        assert ready.wait(30)
        for signum in STOP_SIGNALS:  # sent by `kill`, not by the parent
            subprocess.run(["kill", "-s", signal.Signals(signum).name.removeprefix("SIG"), str(child.pid)], check=True)
        time.sleep(0.5)
        assert child.is_alive() and child.exitcode is None
        child.terminate()  # SIGTERM from the parent
        child.join(10)
        assert child.exitcode == 0
    finally:
        child.kill()
    assert set(STOP_SIGNALS) >= {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}


def test_the_loaders_worker_init_leaves_the_signals_then_runs_its_own_init(monkeypatch):
    calls = []
    monkeypatch.setattr("effnet_lightning.stop_signals.leave_stop_signals_to_parent", lambda: calls.append("left"))
    LeavingStopSignals(then=calls.append)(3)
    assert calls == ["left", 3]
    assert isinstance(pickle.loads(pickle.dumps(LeavingStopSignals())), LeavingStopSignals)  # spawned workers


def test_the_signal_the_slurm_script_asks_for_is_a_stop_signal():
    script = (Path(__file__).parents[2] / "configs" / "slurm.sbatch").read_text()
    named = re.search(r"^#SBATCH --signal=(?:B:)?(SIG\w+)@\d+", script, re.MULTILINE)
    assert named is not None and getattr(signal, named.group(1)) in STOP_SIGNALS
