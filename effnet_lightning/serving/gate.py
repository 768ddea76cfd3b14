"""The front door of POST /predict, in the HTTP server's process, before anything is queued for
the model: 503 with Retry-After while the model is still loading, the upload limit, the image
decoded and checked (`uploads`), `k` checked, and the evaluation resize and centre crop. What
passes reaches LitServe's endpoint as the JSON its workers read, `{"pixels": <base64 of the
cropped uint8 image, 3 x crop x crop>, "k": 5}`: one bad request never fails a batch of good
ones, and the workers are left only the normalisation and the network."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from effnet_lightning.data.transforms import eval_crop
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.serving.uploads import BadUpload, decode_upload, upload_bytes

RETRY_AFTER_S = 2


class RequestGate:
    """ASGI middleware for POST `path`; other requests pass untouched.

    Args:
        ready: whether the model workers are ready (False: 503 with Retry-After).
        preprocessing: the model's evaluation resize and crop.
        num_classes: the largest `k` a request may ask for.
        max_upload_bytes: larger bodies get 413 (also when sent without a Content-Length).
        min_side, max_pixels: images outside these get 422 / 413 (`uploads.decode_upload`).
    """

    def __init__(
        self,
        app,
        ready: Callable[[], bool],
        preprocessing: Preprocessing,
        num_classes: int,
        max_upload_bytes: int,
        min_side: int,
        max_pixels: int,
        path: str = "/predict",
    ):
        self.app = app
        self.ready = ready
        self.crop = eval_crop(preprocessing)
        self.num_classes = num_classes
        self.max_upload_bytes = max_upload_bytes
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.path = path
        self.opened = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if not self.opened:
            self.opened = self.ready()  # asked until the workers are ready, then never again
        if not self.opened:
            answer = JSONResponse(
                {"detail": "the model is still loading: retry shortly"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return await answer(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            k = self.top_k(scope.get("query_string", b"").decode("latin-1"))
            body = await self.read_body(receive, headers.get("content-length"))
            # Parsing, decoding and encoding take milliseconds per image: off the event loop.
            payload = await run_in_threadpool(self.payload, body, headers.get("content-type", ""), k)
        except BadUpload as e:
            return await JSONResponse({"detail": e.message}, status_code=e.status)(scope, receive, send)
        kept = [(n, v) for n, v in scope["headers"] if n.lower() not in (b"content-type", b"content-length")]
        scope = {
            **scope,
            "headers": [*kept, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))],
        }
        return await self.app(scope, replay(payload, receive), send)

    def payload(self, body: bytes, content_type: str, k: int) -> bytes:
        """The JSON the workers read, once the upload is checked (or `BadUpload`)."""
        image = decode_upload(upload_bytes(body, content_type), self.min_side, self.max_pixels)
        pixels = self.crop(image).contiguous().numpy().tobytes()
        return json.dumps({"pixels": base64.b64encode(pixels).decode("ascii"), "k": k}).encode()

    def top_k(self, query: str) -> int:
        """`k` from the query string (default: 5, or every class when there are fewer)."""
        values = parse_qs(query).get("k")
        if not values:
            return min(5, self.num_classes)
        try:
            k = int(values[-1])
        except ValueError:
            k = 0
        if not 1 <= k <= self.num_classes:
            raise BadUpload(422, f"k={values[-1]} is not a number of classes from 1 to {self.num_classes}")
        return k

    async def read_body(self, receive, content_length: str | None) -> bytes:
        """The whole body, refused (413) as soon as it is larger than the limit."""
        limit = self.max_upload_bytes
        if content_length and content_length.isdigit() and int(content_length) > limit:
            raise BadUpload(413, f"the upload is {int(content_length):,} bytes, more than {upload_limit(limit)}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadUpload(400, "the client closed the connection before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadUpload(413, f"the upload is more than {upload_limit(limit)}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def upload_limit(limit: int) -> str:
    return f"--max_upload_mb {limit / 2**20:g} allows: send a smaller file, or start the server with a larger limit"


def replay(payload: bytes, receive):
    """An ASGI `receive` that gives `payload` as the whole body, then what the client sends."""
    sent = False

    async def receive_payload():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    return receive_payload
