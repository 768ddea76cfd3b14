"""`python cli.py serve`: the real server on 127.0.0.1, talked to over HTTP. One server (the
packaged Lite0 ImageNet weights, batching on) answers the photos, the concurrent burst and the
bad requests, and its page is opened in headless Chromium; a server of the exported ONNX file
is stopped by SIGTERM to its process group in the middle of a burst; after a fit, `serve` with
no flags serves its best checkpoint and stops on a SIGTERM to its own process; bad arguments
end in one line."""

import http.client
import io
import json
import signal
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import Browser
from tests.helpers.cli import CSV, TINY, run_cli, run_main
from tests.helpers.fault_doc import expect
from tests.helpers.serving import ServeProcess, exchange, multipart, post

LITE0 = ["--model.variant", "lite0", "--model.weights", "imagenet"]
QUIET = ["--trainer.enable_progress_bar", "false", *CSV]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five real photos skimage ships, and two odd encodings predict reads: a CMYK JPEG and a
    16-bit grayscale PNG."""
    skimage_data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("serve_photos")
    Image.fromarray(skimage_data.coffee()).save(root / "coffee.jpg", quality=95)
    Image.fromarray(skimage_data.chelsea()).save(root / "chelsea.png")
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.jpg", quality=92)
    Image.fromarray(skimage_data.rocket()).save(root / "rocket.jpg", quality=92)
    Image.fromarray(skimage_data.camera()).save(root / "camera.png")
    Image.fromarray(skimage_data.coffee()).convert("CMYK").save(root / "coffee_cmyk.jpg", quality=95)
    deep = (skimage_data.camera().astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(root / "camera_16bit.png")
    assert Image.open(root / "camera_16bit.png").mode.startswith("I;16")
    return root


@pytest.fixture(scope="module")
def predicted(photos, tmp_path_factory):
    """{file name: predict's top-5 [(class, prob)]} for every photo."""
    out = tmp_path_factory.mktemp("serve_predict")
    run_cli(["predict", *LITE0, "--data.predict_root", photos, "--predictions.output_dir", out, *QUIET], out)
    rows = json.loads((out / "predictions.json").read_text())["predictions"]
    return {Path(r["path"]).name: [(c["class"], c["prob"]) for c in r["top_k"]] for r in rows}


@pytest.fixture(scope="module")
def server(photos, tmp_path_factory):
    """The Lite0 server, batching up to 8 requests; `first_answers` are what POST /predict got
    from the moment the port opened until the first 200."""
    cwd = tmp_path_factory.mktemp("serve")
    process = ServeProcess([*LITE0, "--max_batch_size", "8", "--batch_timeout", "0.05", *QUIET], cwd)
    try:
        process.first_answers_seen = process.first_answers((photos / "chelsea.png").read_bytes())
        yield process
    finally:
        process.signal_group(signal.SIGINT)  # Ctrl+C in its terminal: drained as SIGTERM is
        try:
            assert process.process.wait(timeout=60) == 0, process.log()
        finally:
            process.stop()  # (ends it if it hangs)
        assert "serve: SIGINT: answering the requests in flight" in process.log()
        assert "Traceback" not in process.log(), process.log()


def answer_pairs(answer: dict) -> list[tuple[str, float]]:
    return [(c["class"], c["prob"]) for c in answer["top_k"]]


def assert_same_top5(served, predicted_row, tolerance=1e-5):
    assert [c for c, _ in served] == [c for c, _ in predicted_row]
    assert np.allclose([p for _, p in served], [p for _, p in predicted_row], atol=tolerance, rtol=0)


@pytest.mark.slow
def test_served_answers_equal_predicts_for_real_photos_raw_and_multipart(server, photos, predicted):
    for path in sorted(photos.iterdir()):  # the CMYK and 16-bit files too: served as predict reads them
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        status, answer, _ = post(server.port, path.read_bytes(), kind)
        assert status == 200, (path.name, answer)
        assert_same_top5(answer_pairs(answer), predicted[path.name])
        status, form_answer, _ = post(server.port, *multipart(path.read_bytes(), path.name))
        assert status == 200 and form_answer == answer
    assert predicted["coffee.jpg"][0][0] == "espresso"
    status, answer, _ = post(server.port, (photos / "coffee.jpg").read_bytes(), query="?k=2")
    assert status == 200 and len(answer["top_k"]) == 2


@pytest.mark.slow
def test_while_the_model_loads_predict_answers_503_with_retry_after(server):
    *loading, ready = server.first_answers_seen
    assert ready[0] == 200
    assert loading, "the port opened after the model had loaded"
    for status, answer, headers in loading:
        assert status == 503 and int(headers["retry-after"]) > 0
        assert answer == {"detail": "the model is still loading: retry shortly"}
    # GET /health after each answer: 503 until the model is ready, then 200, never back
    assert server.health[0] == 503 and server.health[-1] == 200
    assert server.health == sorted(server.health, reverse=True), server.health
    expect("serve-loading", "503", "Retry-After", "the model is still loading: retry shortly")


@pytest.mark.slow
def test_64_concurrent_requests_each_get_their_own_images_answer_in_batches(server, photos, predicted):
    names = sorted(photos.iterdir())
    jobs = [names[i % len(names)] for i in range(64)]
    batches_before = len(server.batch_sizes())
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda p: post(server.port, p.read_bytes(), "application/octet-stream"), jobs))
    for path, (status, answer, _) in zip(jobs, answers):
        assert status == 200
        assert_same_top5(answer_pairs(answer), predicted[path.name])
    sizes = server.batch_sizes()[batches_before:]
    print(f"batch sizes of 64 concurrent requests: {sizes}")
    assert sum(sizes) == 64 and max(sizes) > 1 and max(sizes) <= 8


# The page's bar colours (page.html): the filled part, and the empty track after it.
BAR, TRACK = (0x1F, 0x6F, 0xEB), (0xE4, 0xE7, 0xEC)


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_an_uploaded_photos_top_class(server, photos, predicted):
    expected = predicted["coffee.jpg"]
    browser = Browser()
    try:
        browser.open(f"http://127.0.0.1:{server.port}/")
        assert browser.evaluate("document.scripts.length === 1 && !document.querySelector('[src^=http], link')")
        browser.set_file("#file", photos / "coffee.jpg")
        browser.wait_for("document.body.dataset.state === 'done'")
        rows = browser.evaluate(
            "[...document.querySelectorAll('.row')].map(r => [r.querySelector('.name').textContent,"
            " r.querySelector('.prob').textContent])"
        )
        status = browser.evaluate("document.getElementById('status').textContent")
        track = browser.evaluate(
            "(({x, y, width, height}) => ({x, y, width, height}))"
            "(document.querySelector('.track').getBoundingClientRect())"
        )
        shown = browser.evaluate(
            "(({x, y, width, height}) => ({x, y, width, height}))"
            "(document.getElementById('preview').getBoundingClientRect())"
        )
        picture = browser.screenshot()
    finally:
        browser.close()
    assert status == "coffee.jpg: espresso"
    assert rows == [[name, f"{100 * prob:.1f}%"] for name, prob in expected]
    # The first bar, read from the screenshot's pixels: filled in the bar's colour for the top
    # class's share of the track, the track's colour after it.
    y = round(track["y"] + track["height"] / 2)
    line = [picture.getpixel((x, y)) for x in range(round(track["x"]), round(track["x"] + track["width"]))]
    filled = sum(max(abs(a - b) for a, b in zip(pixel, BAR)) <= 12 for pixel in line)
    empty = sum(max(abs(a - b) for a, b in zip(pixel, TRACK)) <= 12 for pixel in line)
    assert abs(filled / len(line) - expected[0][1]) < 0.02, (filled, len(line), expected[0])
    assert filled + empty >= len(line) - 2
    assert max(abs(a - b) for a, b in zip(picture.getpixel((round(track["x"]) + 2, y)), BAR)) <= 12
    # The photo itself, fitted into the preview's box (inside its 1-px border) on white.
    box = (round(shown["x"]) + 1, round(shown["y"]) + 1, round(shown["x"] + shown["width"]) - 1)
    side = box[2] - box[0]
    photo = Image.open(photos / "coffee.jpg").convert("RGB")
    fitted = photo.resize((side, round(side * photo.height / photo.width)), Image.Resampling.BILINEAR)
    expected_box = Image.new("RGB", (side, side), "white")
    expected_box.paste(fitted, (0, (side - fitted.height) // 2))
    seen = np.asarray(picture.crop((box[0], box[1], box[2], box[1] + side)), dtype=float)
    assert np.abs(seen - np.asarray(expected_box, dtype=float)).mean() < 8


def truncated_png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with one tiny row of data: a decompression bomb
    as a server receives it (PIL knows its size from the header alone)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def bad_requests(photos) -> dict[str, tuple[bytes, str | None, str, int, str]]:
    """name: (body, content type, query, expected status, expected message)."""
    jpeg = (photos / "coffee.jpg").read_bytes()
    empty_form, form_type = multipart(b"")
    return {
        "empty body": (b"", "image/jpeg", "", 400, "the request has no image"),
        "empty multipart file": (empty_form, form_type, "", 400, "the request has no image"),
        "not an image": (b"%PDF-1.4 not an image at all", "image/jpeg", "", 400, "is not an image file"),
        "truncated JPEG": (jpeg[: len(jpeg) // 3], "image/jpeg", "", 400, "could not be decoded"),
        "decompression bomb": (
            truncated_png_header(40_000, 40_000),
            "image/png",
            "",
            413,
            "1,600,000,000 pixels, more",
        ),
        "large image header": (truncated_png_header(10_000, 9_000), "image/png", "", 413, "10000x9000 pixels, more"),
        "1x1 image": (png_bytes(Image.new("RGB", (1, 1), "red")), "image/png", "", 422, "1x1 pixels: too small"),
        "oversized upload": (b"\xff" * (3 * 2**20), "image/jpeg", "", 413, "more than --max_upload_mb 2 allows"),
        "wrong content type": (jpeg, "application/json", "", 415, "content type application/json is not an image"),
        "curl's default type": (jpeg, "application/x-www-form-urlencoded", "", 415, "curl's default"),
        "k out of range": (jpeg, "image/jpeg", "?k=0", 422, "k=0 is not a number of classes from 1 to 1000"),
        "k not a number": (jpeg, "image/jpeg", "?k=five", 422, "k=five is not a number of classes"),
    }


@pytest.mark.slow
def test_every_bad_request_gets_its_4xx_line_and_the_next_good_request_is_answered(server, photos, tmp_path):
    good = (photos / "chelsea.png").read_bytes()
    # two inference workers and two HTTP servers; started while the shared server answers
    limited = ServeProcess([*LITE0, "--max_upload_mb", "2", "--workers_per_device", "2", *QUIET], tmp_path)
    try:
        limited.first_answers(good)
        workers = [command for command in group_members(limited.process.pid, 0) if "spawn_main" in command]
        assert len(workers) == 2, workers
        for name, (body, kind, query, expected, message) in bad_requests(photos).items():
            for port in (server.port, limited.port) if name != "oversized upload" else (limited.port,):
                status, answer, headers = post(port, body, kind, query)
                assert (status, name) == (expected, name), answer
                assert headers["content-type"] == "application/json" and message in answer["detail"], (name, answer)
                assert "\n" not in answer["detail"]
                assert post(port, good, "image/png")[0] == 200, f"no answer after {name}"
    finally:
        assert limited.stop() == 0, limited.log()
    assert "Traceback" not in server.log() and "Traceback" not in limited.log()
    expect("serve-bad-requests", *(message for *_, message in bad_requests(photos).values()))


@pytest.mark.slow
def test_sigterm_to_the_group_during_a_burst_answers_every_accepted_request_then_exits_0(
    photos, predicted, tmp_path, capsys, monkeypatch
):
    run_cli(["export", *LITE0, "--formats", "[onnx]", "--output_dir", tmp_path / "export", *QUIET], tmp_path)
    onnx = tmp_path / "export" / "model.onnx"
    code, line = run_main(["serve", "--onnx", onnx, "--data.eval_image_size", "256"], capsys, monkeypatch, tmp_path)
    assert code == 2 and line == (
        "error: the ONNX file takes 224-px images (its model.json) but the data module crops 256 px: "
        "leave --data.image_size and --data.eval_image_size out"
    )
    served = ServeProcess(["--onnx", onnx, "--max_batch_size", "4", *QUIET], tmp_path)
    warm = (photos / "chelsea.png").read_bytes()
    served.first_answers(warm)
    names = sorted(photos.iterdir())
    jobs = [names[i % len(names)] for i in range(24)]
    warmed, go = threading.Barrier(len(jobs) + 1), threading.Barrier(len(jobs) + 1)

    def client(path: Path):
        """A connection the server has accepted (its first request answered), then the burst's request."""
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
        try:
            assert exchange(connection, warm, "image/png")[0] == 200
            warmed.wait()
            go.wait()
            return exchange(connection, path.read_bytes())
        finally:
            connection.close()

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(client, path) for path in jobs]
        warmed.wait()
        before = len(served.batch_sizes())
        go.wait()
        while len(served.batch_sizes()) < before + 2:  # the burst is being answered
            time.sleep(0.001)
        served.signal_group(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert served.process.wait(timeout=60) == 0, served.log()
    for path, (status, answer, _) in zip(jobs, answers):
        assert status == 200, answer
        assert_same_top5(answer_pairs(answer), predicted[path.name], tolerance=1e-4)  # ONNX's rounding
    log = served.err.read_text()  # the workers' batch lines and the server's notices, in order
    stopping = "serve: SIGTERM: answering the requests in flight, then stopping"
    assert stopping in log and served.out.read_text().rstrip().endswith("serve: stopped"), served.log()
    answered_after = [line for line in log.split(stopping)[1].splitlines() if line.startswith("serve: batch of")]
    print(f"batches answered after SIGTERM: {answered_after}")
    assert answered_after, "the signal came after the burst: nothing was in flight"
    expect("serve-sigterm", stopping, "serve: stopped", "0")
    with pytest.raises(OSError):
        post(served.port, b"", timeout=5)


def group_members(group: int, within_s: float) -> list[str]:
    """The command lines of the processes still in `group` after waiting up to `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group and fields[0] != "Z":
                    members.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ValueError):
                continue
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


def test_bad_serve_arguments_end_in_one_line_before_anything_loads(capsys, monkeypatch, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            ("--host", "localhost"): "error: --host localhost: give 127.0.0.1 (this machine only), 0.0.0.0",
            ("--port", "80"): "error: --port 80: give a port from 1024 to 65535",
            ("--port", str(port)): f"error: --port {port}: cannot listen on 127.0.0.1 (Address already in use)",
            ("--max_batch_size", "0"): "error: serve: --max_batch_size and --workers_per_device must be at least 1",
            ("--onnx", str(tmp_path / "gone.onnx")): f"error: --onnx {tmp_path / 'gone.onnx'}: no such file",
        }
        for args, expected in cases.items():
            code, line = run_main(["serve", *LITE0, *args], capsys, monkeypatch, tmp_path)
            assert code == 2 and line.startswith(expected), line
    code, line = run_main(["serve"], capsys, monkeypatch, tmp_path)
    assert code == 2 and line.startswith("error: nothing to serve: no trained checkpoint recorded"), line
    expect("serve-args", "give a port from 1024 to 65535", "(Address already in use): pass another --port")
    expect("serve-args", "nothing to serve: no trained checkpoint recorded")


@pytest.mark.slow
def test_after_a_fit_serve_with_no_flags_answers_as_predict_from_the_best_checkpoint(small_root, tmp_path):
    run_cli(
        [
            "fit",
            "--data.root",
            small_root,
            *TINY,
            *CSV,
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
        ],
        tmp_path,
    )
    images = tmp_path / "to_predict"
    images.mkdir()
    for path in sorted(small_root.glob("val/*/*.png"))[::20]:
        (images / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    run_cli(["predict", "--data.predict_root", images, "--predictions.output_dir", tmp_path / "out", *QUIET], tmp_path)
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    served = ServeProcess(QUIET, tmp_path)
    try:
        served.first_answers(next(images.iterdir()).read_bytes())
        for row in rows:
            status, answer, _ = post(served.port, Path(row["path"]).read_bytes(), "image/png")
            assert status == 200
            assert_same_top5(answer_pairs(answer), [(c["class"], c["prob"]) for c in row["top_k"]])
    finally:
        served.process.send_signal(signal.SIGTERM)  # to the server's process alone: it stops its group
        assert served.process.wait(timeout=60) == 0, served.log()
    left = group_members(served.process.pid, within_s=10)  # multiprocessing's helpers end on their own
    assert not left, f"left running after serve exited: {left}"
    best = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["best_model_path"]
    assert f"serve: using the best checkpoint of the most recent fit: {best}" in served.log()
