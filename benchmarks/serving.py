"""Requests per second and latency of `python cli.py serve`, from a client on the same machine:
each model path (the folded network in PyTorch, ONNX fp32 and INT8 through onnxruntime), Lite0
and B0, with dynamic batching (`--max_batch_size 8`) and without it (`--max_batch_size 1`: the
same server and model path, one request per forward pass), at 1, 8 and 32 concurrent clients.

    python benchmarks/serving.py                          # every row below (about 10 minutes on 2 cores)
    python benchmarks/serving.py --variants lite0 --paths eager --rounds 5
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/serving.py --variants lite0 \
        --paths eager --results docs/serving/results-avx2.json   # the torch path's other kernels

Each configuration is a real server process started by the CLI; the client is this process:
threads sending real photos (skimage's, as JPEG) over HTTP/1.1 keep-alive connections, each
request timed from send to answer. Each server is measured `--rounds` times at each concurrency;
reported per row: requests per second, p50 and p99 latency (medians over the rounds), the batch
sizes the workers logged, the client's share of the machine's CPU time (it runs on the same
cores as the server), and the ratio to the same path one request at a time (the median of the
per-round ratios, and the worst). Lite0 serves its packaged ImageNet weights; B0 a network
with random weights (speed only). The INT8 file is calibrated on random images, also for speed
only: `export --formats "[onnx_int8]"` measures a real one's accuracy. Results go to
docs/serving/results.json, which the command resumes from: delete it to measure again.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from effnet_lightning import create_model
from effnet_lightning.export.folder import export_model
from effnet_lightning.export.onnx_int8 import quantize_onnx_int8
from effnet_lightning.models.factory import imagenet_categories

RESULTS = ROOT / "docs" / "serving" / "results.json"
CONCURRENCY = (1, 8, 32)
PATHS = ("eager", "onnx", "onnx_int8")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def photos() -> list[bytes]:
    """Real photos as JPEG files (what clients send)."""
    from skimage import data

    out = []
    for image in (data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), data.camera()):
        buffer = io.BytesIO()
        Image.fromarray(image).convert("RGB").save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def exported(variant: str, folder: Path) -> dict[str, list[str]]:
    """{path: the serve arguments that run it}: the network exported as timm's hub folder (the
    eager path loads it as --model.weights), ONNX fp32 and INT8 beside one model.json."""
    network = create_model(variant, weights="imagenet" if variant == "lite0" else None).eval()
    export_model(network, folder, class_names=list(imagenet_categories()), formats=["onnx", "hub"])
    size = network.provenance.preprocessing.crop_size
    quantize_onnx_int8(folder / "model.onnx", folder / "model_int8.onnx", torch.randn(32, 3, size, size))
    info = json.loads((folder / "model.json").read_text())
    info["files"]["onnx_int8"] = "model_int8.onnx"
    (folder / "model.json").write_text(json.dumps(info, indent=1))
    return {
        "eager": ["--model.variant", variant, "--model.weights", str(folder / "hub")],
        "onnx": ["--onnx", str(folder / "model.onnx")],
        "onnx_int8": ["--onnx", str(folder / "model_int8.onnx")],
    }


class Server:
    """`cli.py serve` in a process of its own, until `stop`."""

    def __init__(self, args: list[str], port: int, log: Path):
        self.port, self.log = port, log
        command = [sys.executable, str(ROOT / "cli.py"), "serve", *args, "--port", str(port)]
        command += ["--trainer.logger", "CSVLogger", "--trainer.default_root_dir", str(log.parent / "runs")]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def batch_sizes(self) -> list[int]:
        lines = self.log.read_text().splitlines()
        return [int(line.split()[3]) for line in lines if line.startswith("serve: batch of")]

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=120)


def load(port: int, images: list[bytes], concurrency: int, requests: int) -> dict:
    """`requests` POST /predict from `concurrency` threads, each on its own keep-alive connection."""
    latencies, lock, counter = [], threading.Lock(), iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return connection.close()
            start = time.perf_counter()
            connection.request(
                "POST", "/predict", body=images[index % len(images)], headers={"Content-Type": "image/jpeg"}
            )
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"answer {answer.status}")
            with lock:
                latencies.append(time.perf_counter() - start)

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    return {
        "requests_per_s": requests / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "client_cpu_share": cpu / wall / (os.cpu_count() or 1),
    }


def measure(args, images, row_key, serve_args, batch: int, folder: Path, port: int) -> list[dict]:
    """Rows of one server: each concurrency level, `args.rounds` times."""
    server = Server(
        [*serve_args, "--max_batch_size", str(batch), "--batch_timeout", "0.01"], port, folder / "serve.log"
    )
    try:
        load(port, images, 8, 16)  # warm-up
        rows = []
        for round_index in range(args.rounds):
            for concurrency in CONCURRENCY:
                before = len(server.batch_sizes())
                result = load(port, images, concurrency, max(args.requests, 6 * concurrency))
                sizes = server.batch_sizes()[before:]
                row = {**row_key, "max_batch_size": batch, "concurrency": concurrency, "round": round_index}
                rows.append({**row, **result, "mean_batch": statistics.mean(sizes), "largest_batch": max(sizes)})
                print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["lite0", "b0"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--requests", type=int, default=64, help="requests per level and round (at least 6 per client)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each concurrency level per server")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {"rows": []}
    kernels = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    results["machine"] = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, oneDNN ISA {kernels}"
    done = {(r["variant"], r["path"], r["max_batch_size"]) for r in results["rows"]}  # resumed: measured already
    images = photos()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            folder = Path(tmp) / variant
            serve_args = exported(variant, folder)
            for path in args.paths:
                for batch in (8, 1):
                    if (variant, path, batch) in done:
                        continue
                    rows = measure(
                        args, images, {"variant": variant, "path": path}, serve_args[path], batch, folder, args.port
                    )
                    results["rows"] += rows
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results["rows"]))


PATH_NAMES = {"eager": "folded (PyTorch)", "onnx": "ONNX fp32", "onnx_int8": "ONNX INT8"}


def table(rows: list[dict]) -> str:
    """The markdown table of docs/serving.md: each model, path and concurrency, batched and one
    request at a time (medians over the rounds), and their ratio (the median of the per-round
    ratios, the worst in brackets)."""
    columns = ["model", "path", "clients", "req/s batched", "req/s one at a time", "ratio (worst)"]
    columns += ["p50 / p99 ms batched", "p50 / p99 ms one at a time"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["path"], row["concurrency"], row["max_batch_size"]), []).append(row)
    for (variant, path, concurrency, batch), batched in groups.items():
        alone = groups.get((variant, path, concurrency, 1))
        if batch == 1 or not alone:
            continue
        ratios = [b["requests_per_s"] / a["requests_per_s"] for b, a in zip(batched, alone)]

        def median(found: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in found)

        model = {"lite0": "Lite0"}.get(variant, variant.upper())
        lines.append(
            f"| {model} | {PATH_NAMES[path]} | {concurrency} | {median(batched, 'requests_per_s'):.1f} | "
            f"{median(alone, 'requests_per_s'):.1f} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}) | "
            f"{median(batched, 'p50_ms'):.0f} / {median(batched, 'p99_ms'):.0f} | "
            f"{median(alone, 'p50_ms'):.0f} / {median(alone, 'p99_ms'):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
