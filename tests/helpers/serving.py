"""A real `cli.py serve` process for the tests, and an HTTP client for it (the standard library's:
what a user's script would use)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, content_type: str | None = "image/jpeg", query: str = "", timeout: float = 120):
    """POST /predict on a connection of its own: (status, JSON answer, headers by lower-case name)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return exchange(connection, body, content_type, query)
    finally:
        connection.close()


def exchange(connection: http.client.HTTPConnection, body: bytes, content_type: str | None = "image/jpeg", query=""):
    """POST /predict on `connection` (kept open when the server keeps it alive)."""
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request("POST", f"/predict{query}", body=body, headers=headers)
    answer = connection.getresponse()
    data = answer.read()
    return answer.status, json.loads(data) if data else None, {k.lower(): v for k, v in answer.getheaders()}


def health(port: int) -> int:
    """GET /health's status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/health")
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def multipart(data: bytes, filename: str = "photo.jpg", field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file, and its content type."""
    boundary = "effnet-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class ServeProcess:
    """`python cli.py serve ARGS --port <free>` in a session (process group) of its own, its
    output in files under `cwd`."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.port = free_port()
        self.cwd = cwd
        self.out, self.err = cwd / "serve.out", cwd / "serve.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "cli.py"), "serve", *map(str, args), "--port", str(self.port)],
                cwd=cwd,
                env={**(env or os.environ), "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def first_answers(self, probe: bytes, timeout: float = 180) -> list[tuple[int, dict, dict]]:
        """POST `probe` until it is answered 200: every answer before that (a 503 while the
        model loads), then the 200. After each answer, GET /health's status goes to `health`."""
        answers, deadline, self.health = [], time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                answers.append(post(self.port, probe, "image/png"))
            except OSError:  # not listening yet
                time.sleep(0.01)
                continue
            self.health.append(health(self.port))
            if answers[-1][0] == 200:
                return answers
        raise AssertionError(f"serve did not answer 200 within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def batch_sizes(self) -> list[int]:
        """The size of each batch the workers ran, from their log lines."""
        return [
            int(line.split()[3]) for line in self.err.read_text().splitlines() if line.startswith("serve: batch of")
        ]

    def signal_group(self, signum=signal.SIGTERM) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal_group()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
