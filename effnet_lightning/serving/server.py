"""The server `python cli.py serve` runs: LitServe with the page at `/`, `RequestGate` in front
of POST /predict, the HTTP port open while the model loads (503 with Retry-After until it is
ready), and a SIGTERM or Ctrl+C that drains.

A SIGTERM, sent to this process alone or to its whole group (as SLURM, `timeout`, systemd and
container runtimes send it), or Ctrl+C in a terminal, stops the HTTP servers from accepting,
lets them answer every request they accepted (the inference workers keep running meanwhile),
then stops the workers and exits 0.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from importlib.resources import files

import torch
from fastapi.responses import HTMLResponse
from litserve import LitServer
from litserve.utils import WorkerSetupStatus

from effnet_lightning.console import say
from effnet_lightning.serving.gate import RequestGate

# The hosts LitServe binds to.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")

# Images smaller than this a side are refused (422): nothing is left to classify once upscaled.
MIN_SIDE = 8

# Images of more pixels are refused from their header (413): PIL's own decompression-bomb limit.
MAX_PIXELS = 89_478_485


def page() -> str:
    """The page at `/` (self-contained: no external script, style or font)."""
    return files("effnet_lightning.serving").joinpath("page.html").read_text(encoding="utf-8")


def check_address(host: str, port: int) -> None:
    """One line, before anything starts, when the server could not listen at host:port."""
    if host not in HOSTS:
        raise ValueError(f"--host {host}: give 127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 address) or ::")
    if not 1024 <= port <= 65535:
        raise ValueError(f"--port {port}: give a port from 1024 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ValueError(f"--port {port}: cannot listen on {host} ({e.strerror}): pass another --port") from None


class ModelServer(LitServer):
    """LitServer that opens its HTTP port while the workers load (its gate answers 503 until
    they are ready) and says in one line when they are."""

    def __init__(self, api, *, address: str, **kwargs):
        super().__init__(api, **kwargs)
        self.address = address
        self.failed = False

    def workers_ready(self) -> bool:
        statuses = list(getattr(self, "workers_setup_status", {}).values())
        return bool(statuses) and all(status == WorkerSetupStatus.READY for status in statuses)

    def verify_worker_status(self) -> None:
        threading.Thread(target=self.watch_workers, name="serve-ready", daemon=True).start()

    def watch_workers(self) -> None:
        while True:
            statuses = list(self.workers_setup_status.values())
            if WorkerSetupStatus.ERROR in statuses:
                self.failed = True
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if self.workers_ready():
                say(f"serve: ready at {self.address} (the page at /, POST /predict, GET /health)")
                return
            time.sleep(0.05)


class Drain:
    """The SIGTERM and SIGINT (Ctrl+C) handler of the serving process. Forked children inherit
    it and ignore the signal here (the HTTP servers install their own, the inference workers
    theirs)."""

    def __init__(self, released):
        self.pid = os.getpid()
        self.released = released
        self.stopping = False

    def __call__(self, signum, frame) -> None:
        if os.getpid() != self.pid or self.stopping:
            return
        self.stopping = True
        say(f"serve: {signal.Signals(signum).name}: answering the requests in flight, then stopping", err=True)
        http_servers = [p for p in mp.active_children() if p.name.startswith("LitServer-")]
        for process in http_servers:  # the signal may have been sent to this process alone
            os.kill(process.pid, signal.SIGTERM)
        for process in http_servers:
            process.join()
        self.released.set()
        raise KeyboardInterrupt  # LitServer.run's own way out: it stops the workers


def serve(
    api,
    *,
    host: str,
    port: int,
    accelerator: str,
    devices: int,
    workers_per_device: int,
    max_upload_mb: float,
    timeout: float,
) -> None:
    """Serve `api` (a `ClassifierAPI`) until SIGTERM or Ctrl+C, at an address `check_address`
    accepted."""
    shown = f"[{host}]" if ":" in host else host
    server = ModelServer(
        api,
        address=f"http://{shown}:{port}",
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        timeout=timeout,
    )
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    html = page()
    server.app.add_api_route("/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False)
    server.app.add_middleware(
        RequestGate,
        ready=server.workers_ready,
        preprocessing=api.preprocessing,
        num_classes=len(api.class_names),
        max_upload_bytes=int(max_upload_mb * 2**20),
        min_side=MIN_SIDE,
        max_pixels=MAX_PIXELS,
    )
    # The HTTP servers are forked from here; each decodes and crops its uploads on one torch
    # thread per request (torch's OpenMP threads do not survive a fork).
    os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))
    drain = Drain(api.released)
    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    try:
        server.run(host=host, port=port, log_level="warning", generate_client_file=False)
    except KeyboardInterrupt:
        pass
    finally:
        end_children(api.released)
    if server.failed:
        raise ValueError("serve: the model failed to load in its worker (its error is above)")
    say("serve: stopped")


def end_children(released) -> None:
    """Whatever LitServer left running (a stop during its start): the workers exit on SIGTERM
    once `released` is set."""
    released.set()
    for child in mp.active_children():
        child.terminate()
        child.join(timeout=10)
