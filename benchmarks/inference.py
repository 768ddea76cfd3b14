"""Inference speed of every path a user can run, side by side in one process (round-robin, so
machine noise hits each alike): torchvision and timm eager and through onnxruntime, this
project's plain and folded networks (what validate / test / predict run: the folded network in
cache-sized slices of the batch, and for comparison the whole batch at once), the folded network
compiled with inductor's freezing (`--model.compile true`; with `--compile`, minutes of
compiling first), and its ONNX exports through onnxruntime, fp32 and static INT8 (QDQ,
per-channel).

    python benchmarks/inference.py                              # b0 and lite0, 224 px, batch 16
    python benchmarks/inference.py --variants b0 --size 224 --batch 16 --rounds 7 --compile
    python benchmarks/inference.py --device cuda --batch 64 --compile   # GPU rows: fp32 and bf16
    python benchmarks/inference.py --variants v2-s --size 384 --batch 8   # EfficientNetV2-S at its evaluation size

The INT8 file is calibrated here on random images: for speed only (its accuracy is measured by
`export --formats onnx_int8` on real data, see docs/performance.md). Reported: images per second,
median over the rounds, the ratio to torchvision eager (median of per-round ratios), and the
peak resident memory one batch adds above the loaded network (after the warm-up; on a GPU, the
peak of torch.cuda.max_memory_allocated above what the networks hold).

On a GPU (`--device cuda`) the rows are the torch paths, channels_last, in fp32 and under bf16
autocast (what `--trainer.precision bf16-mixed` runs in test / predict): torchvision, timm, this
project's plain and folded networks, and with `--compile` the folded one compiled with freezing.

The torch paths of an AVX2 CPU can be measured on an AVX-512 one by capping the instruction set
of oneDNN (convolutions) and of torch's own kernels, inductor's generated code included;
onnxruntime keeps its own choice:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/inference.py --compile
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effnet_lightning import create_model
from effnet_lightning.export.onnx import export_onnx
from effnet_lightning.export.onnx_int8 import quantize_onnx_int8
from effnet_lightning.export.runtime import onnx_session
from effnet_lightning.models.hub import timm_architecture_name
from effnet_lightning.models.inference import fold_batchnorm, in_chunks


def paths(variant: str, size: int, folder: Path, compile_frozen: bool = False, openvino: bool = False) -> dict:
    """{name: callable(images) -> logits} for one variant."""
    import onnxruntime

    nets = networks(variant)
    runs = {}
    if "torchvision" in nets:
        runs["torchvision eager"] = nets["torchvision"]
    runs["timm eager, channels_last"] = nets["timm"].to(memory_format=torch.channels_last)
    ours = nets["ours plain"].to(memory_format=torch.channels_last)
    runs["ours plain (channels_last)"] = ours
    folded = fold_batchnorm(ours)
    runs["ours folded, whole batch at once"] = folded
    runs["ours folded (validate / test / predict)"] = lambda x: in_chunks(folded, x)
    if compile_frozen:
        compiled = torch.compile(folded, options={"freezing": True})
        runs["ours folded, compiled with freezing"] = lambda x: in_chunks(compiled, x)
    example = torch.randn(2, 3, size, size)
    fp32 = folder / f"{variant}.onnx"
    export_onnx(copy.deepcopy(ours).to(memory_format=torch.contiguous_format), example, fp32, None)
    peers = {"torchvision": runs.get("torchvision eager"), "timm": runs["timm eager, channels_last"]}
    onnx_files = {}
    for peer, model in peers.items():
        if model is not None:
            onnx_files[f"{peer} onnxruntime fp32"] = folder / f"{peer}-{variant}.onnx"
            export_onnx(
                copy.deepcopy(model).to(memory_format=torch.contiguous_format),
                example,
                onnx_files[f"{peer} onnxruntime fp32"],
                None,
            )
    calibration = torch.randn(32, 3, size, size)
    int8 = folder / f"{variant}.int8.onnx"
    quantize_onnx_int8(fp32, int8, calibration)
    options = onnxruntime.SessionOptions()
    # Its threads would otherwise spin after each run and slow the torch paths measured next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    onnx_files.update({"ours onnxruntime fp32": fp32, "ours onnxruntime int8": int8})
    for name, path in onnx_files.items():
        session = onnx_session(path, options)
        runs[name] = lambda x, s=session: s.run(None, {"images": x.numpy()})[0]
    if openvino:
        import openvino as ov

        core = ov.Core()
        for kind, path in (("fp32", fp32), ("int8", int8)):
            compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            runs[f"ours openvino {kind}"] = lambda x, c=compiled: c(x.numpy())[0]
    return runs


def gpu_paths(variant: str, compile_frozen: bool = False, device: str = "cuda") -> dict:
    """{name: callable(images) -> logits} on `device` for one variant: each network channels_last,
    in fp32 and in bf16 autocast, with torchvision's eager fp32 as the baseline."""
    nets = networks(variant)
    runs = {}
    if "torchvision" in nets:
        runs["torchvision eager"] = copy.deepcopy(nets["torchvision"]).to(device)
    to_device = {name: net.to(device, memory_format=torch.channels_last) for name, net in nets.items()}
    to_device["ours folded"] = fold_batchnorm(to_device["ours plain"])
    if compile_frozen:
        to_device["ours folded, compiled with freezing"] = torch.compile(
            to_device["ours folded"], options={"freezing": True}
        )
    for name, net in to_device.items():
        runs[f"{name}, channels_last fp32"] = net
        runs[f"{name}, channels_last bf16"] = lambda x, n=net: _bf16(n, x)
    return runs


def _bf16(network, images: torch.Tensor) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        return network(images)


def networks(variant: str) -> dict:
    """torchvision's (B and V2-S/M/L only), timm's and this project's network for `variant`, in eval
    mode, with seeded random weights."""
    import timm
    import torchvision

    torch.manual_seed(0)
    nets = {}
    if variant.startswith("b") or variant in ("v2-s", "v2-m", "v2-l"):
        nets["torchvision"] = getattr(torchvision.models, f"efficientnet_{variant.replace('-', '_')}")()
    # timm has Lite and V2-B0 to B3 only as TF ports (SAME padding)
    nets["timm"] = timm.create_model(timm_architecture_name(variant, tf=variant.startswith(("lite", "v2-b"))))
    nets["ours plain"] = create_model(variant)
    return {name: net.eval() for name, net in nets.items()}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def peak_memory_mb(run, images) -> float | None:
    """Peak memory one batch of `run` adds above what the process holds before it: on a GPU,
    allocated device memory; on a CPU, resident memory (Linux: the high-water mark is reset
    through /proc/self/clear_refs; freed heap is handed back to the system first, so a path does
    not look lean by reusing an earlier path's memory)."""
    if images.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(images)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        before = _status_mb("VmRSS")
        run(images)
        return _status_mb("VmHWM") - before
    except OSError:
        return None  # not Linux / glibc


def measure(runs: dict, size: int, batch: int, rounds: int, steps: int, device: str = "cpu") -> list[dict]:
    images = torch.randn(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if images.is_cuda else lambda: None
    channels_last = images.contiguous(memory_format=torch.channels_last)
    # The torch networks of this project and timm's take NHWC; onnxruntime and torchvision a plain NCHW tensor.
    nhwc = {name for name in runs if ("channels_last" in name or "ours" in name) and "onnxruntime" not in name}
    inputs = {name: channels_last if name in nhwc else images for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():  # warm-up
            run(inputs[name])
        peaks = {name: peak_memory_mb(run, inputs[name]) for name, run in runs.items()}
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                sync()
                start = time.perf_counter()
                for _ in range(steps):
                    run(inputs[name])
                sync()
                times[name].append(steps * batch / (time.perf_counter() - start))
    base = "torchvision eager" if "torchvision eager" in runs else next(iter(runs))
    return [
        {
            "path": name,
            "img_s": statistics.median(rates),
            "vs": statistics.median(r / b for r, b in zip(rates, times[base])),
            "base": base,
            "peak_mb": peaks[name],
        }
        for name, rates in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "lite0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add the compiled, frozen folded network")
    parser.add_argument("--device", default="cpu", help="cpu (every path), or cuda (the torch paths, fp32 and bf16)")
    parser.add_argument(
        "--openvino", action="store_true", help="add the ONNX files through OpenVINO (pip install openvino)"
    )
    args = parser.parse_args()
    if args.device == "cpu":
        machine = (
            f"{torch.backends.cpu.get_cpu_capability()} kernels, oneDNN up to"
            f" {os.environ.get('ONEDNN_MAX_CPU_ISA', 'the CPU')}, {torch.get_num_threads()} threads"
        )
    else:
        machine = torch.cuda.get_device_name(args.device)
    print(f"torch {torch.__version__} ({machine}), {args.size} px, batch {args.batch}, fp32 input")
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            if args.device == "cpu":
                runs = paths(variant, args.size, Path(folder), args.compile, args.openvino)
            else:
                runs = gpu_paths(variant, args.compile, args.device)
            rows = measure(runs, args.size, args.batch, args.rounds, args.steps, args.device)
            print(f"\n{variant}: medians of {args.rounds} rounds x {args.steps} batches")
            print(f"| path | img/s | vs {rows[0]['base']} | peak MB over the network |\n|---|---|---|---|")
            for r in rows:
                peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
                print(f"| {r['path']} | {r['img_s']:.1f} | {r['vs']:.2f}x | {peak} |")


if __name__ == "__main__":
    main()
