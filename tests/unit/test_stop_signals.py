import pickle
import signal

from effnet_lightning.stop_signals import POOL_STOP_SIGNALS, STOP_SIGNALS, IgnoringStopSignals


def test_a_loader_worker_ignores_every_stop_signal_then_runs_its_own_init(monkeypatch):
    set_to = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: set_to.__setitem__(signum, handler))
    seen = []
    IgnoringStopSignals(then=seen.append)(3)
    assert set_to == dict.fromkeys(STOP_SIGNALS, signal.SIG_IGN)
    assert set(STOP_SIGNALS) >= {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    assert seen == [3]
    assert isinstance(pickle.loads(pickle.dumps(IgnoringStopSignals())), IgnoringStopSignals)  # spawned workers


def test_a_pool_keeps_sigterm_to_end_its_workers():
    assert signal.SIGTERM not in POOL_STOP_SIGNALS and set(POOL_STOP_SIGNALS) == set(STOP_SIGNALS) - {signal.SIGTERM}
