"""Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for tests
of the pages the project serves: open a page, set a file input, read the page, screenshot."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from PIL import Image
from websockets.sync.client import connect

# Without the background-networking flags Chromium tries to reach Google's hosts at every start.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=900,700",
    "--remote-debugging-port=0",
]


def chromium_path() -> str:
    """The browser, or a skip (a failure where EFFNET_REQUIRE_BROWSER is set, as CI sets it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "needs Debian's chromium (apt-get install chromium), which .ci/run installs"
    if os.environ.get("EFFNET_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One headless Chromium with one page; commands are DevTools protocol methods."""

    def __init__(self, timeout: float = 60):
        self.profile = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = Path(self.profile.name) / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.connection = ExitStack()
        self.socket = self.connection.enter_context(connect(page["webSocketDebuggerUrl"], max_size=2**26))
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def open(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"]
        return result.get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
            time.sleep(0.05)
        return value

    def set_file(self, selector: str, path: Path) -> None:
        """Choose `path` in the file input `selector`, as a user would (its change event fires)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        self.connection.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        self.profile.cleanup()
