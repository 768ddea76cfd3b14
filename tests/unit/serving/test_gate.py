"""The front door of POST /predict, called as ASGI: what reaches the app behind it, and what is
answered without reaching it."""

import asyncio
import base64
import io
import json

import numpy as np
from PIL import Image

from effnet_lightning.data.decode import load_rgb
from effnet_lightning.data.transforms import eval_crop
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.serving.gate import RequestGate

PNG = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(PNG, "PNG")
PNG = PNG.getvalue()
PRE = Preprocessing(crop_size=12, resize_size=14)


def call(gate, body: bytes, content_type="image/png", query=b"", chunks=1, method="POST", path="/predict"):
    """(status, JSON body, headers) of `gate`, and what the app behind it received (or None)."""
    seen, sent = {}, []
    size = -(-len(body) // chunks) if body else 1
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        message = await receive()
        seen.update(headers=dict(scope["headers"]), body=message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    headers = [(b"content-type", content_type.encode())] if content_type else []
    if chunks == 1:
        headers.append((b"content-length", b"%d" % len(body)))
    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": headers}
    asyncio.run(RequestGate(app, **gate)(scope, receive, send))
    start, body_message = sent[0], sent[1]
    answer = json.loads(body_message["body"]) if body_message["body"] else None
    return start["status"], answer, dict(start["headers"]), (seen or None)


def gate(ready=True, **changes):
    settings = {
        "ready": lambda: ready,
        "preprocessing": PRE,
        "num_classes": 10,
        "max_upload_bytes": 10_000,
        "min_side": 8,
        "max_pixels": 10**6,
    }
    return {**settings, **changes}


def test_a_good_upload_reaches_the_workers_as_its_evaluation_crop_with_its_k(tmp_path):
    status, _, _, seen = call(gate(), PNG, query=b"k=3")
    assert status == 200
    assert seen["headers"][b"content-type"] == b"application/json"
    assert int(seen["headers"][b"content-length"]) == len(seen["body"])
    sent = json.loads(seen["body"])
    assert sent["k"] == 3
    (tmp_path / "upload.png").write_bytes(PNG)
    crop = eval_crop(PRE)(load_rgb(str(tmp_path / "upload.png")))  # what predict's transform gives the file
    assert crop.shape == (3, 12, 12) and base64.b64decode(sent["pixels"]) == crop.numpy().tobytes()
    _, _, _, seen = call(gate(num_classes=3), PNG)
    assert json.loads(seen["body"])["k"] == 3  # default: 5, or every class when there are fewer


def test_while_loading_every_predict_gets_503_and_other_routes_pass():
    status, answer, headers, seen = call(gate(ready=False), PNG)
    assert (status, answer, seen) == (503, {"detail": "the model is still loading: retry shortly"}, None)
    assert headers[b"retry-after"] == b"2"
    assert call(gate(ready=False), b"", method="GET", path="/health")[0] == 200


def test_uploads_over_the_limit_are_refused_with_or_without_a_length():
    for chunks in (1, 4):  # Content-Length given / a chunked body
        status, answer, _, seen = call(gate(max_upload_bytes=len(PNG) - 1), PNG, chunks=chunks)
        assert status == 413 and seen is None
        assert "--max_upload_mb" in answer["detail"]
    assert call(gate(max_upload_bytes=len(PNG)), PNG, chunks=4)[0] == 200


def test_k_must_be_a_number_of_classes():
    for query in (b"k=0", b"k=11", b"k=x", b"k=2.5"):
        status, answer, _, seen = call(gate(), PNG, query=query)
        assert status == 422 and seen is None
        assert answer["detail"].endswith("is not a number of classes from 1 to 10")
