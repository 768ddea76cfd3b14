"""The server's own parts around LitServe: what it does when the inference workers report in,
and the page. (The address check runs through the real CLI in tests/integration/test_serve.py.)"""

import signal

import litserve as ls
from litserve.utils import WorkerSetupStatus

from effnet_lightning.serving import server as serving


class Echo(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, x):
        return x


def test_ready_workers_are_announced_and_a_failed_one_stops_the_server(monkeypatch, capsys):
    sent = []
    monkeypatch.setattr(serving.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    server = serving.ModelServer(Echo(), address="http://127.0.0.1:8000")
    assert not server.workers_ready()  # no worker has reported yet
    server.workers_setup_status = {"predict_0": WorkerSetupStatus.READY, "predict_1": WorkerSetupStatus.READY}
    server.watch_workers()
    assert server.workers_ready() and not server.failed and sent == []
    assert (
        capsys.readouterr().out == "serve: ready at http://127.0.0.1:8000 (the page at /, POST /predict, GET /health)\n"
    )
    server.workers_setup_status = {"predict_0": WorkerSetupStatus.READY, "predict_1": WorkerSetupStatus.ERROR}
    server.watch_workers()
    assert server.failed and sent == [(serving.os.getpid(), signal.SIGTERM)] and not server.workers_ready()


def test_the_page_is_self_contained():
    page = serving.page()
    assert '<input id="file" type="file" accept="image/*">' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
