"""Training and inference speed and peak memory of this project's EfficientNet against
torchvision's and timm's, measured in one run so that machine noise hits every network alike.

    python benchmarks/models.py                                        # b0, 224 px, batch 16, fp32
    python benchmarks/models.py --precision bf16                       # autocast bf16 (CPU or GPU)
    python benchmarks/models.py --variant b3 --size 300 --batch 8
    python benchmarks/models.py --variant b7 --size 256 --batch 2
    python benchmarks/models.py --variant v2-s --size 300 --batch 8   # EfficientNetV2-S at its training size
    python benchmarks/models.py --configs ours ours-compile timm-cl    # a subset (see --help)

Every configuration lives in its own worker process: it builds its network once, warms up
(the compile time of compiled configurations is reported apart), measures its own peak memory
and then waits. The parent then goes round-robin over the workers, `--repeats` times, asking
each for `--steps` timed training steps (forward, loss, backward, SGD step) and `--steps` timed
inference batches; only one worker runs at a time. Reported: medians over the repeats, and ratios
against torchvision's default network and timm's in channels_last (medians of the per-repeat
ratios: a busy phase of the machine slows both sides of a ratio alike).

Peak memory: on a GPU, torch.cuda.max_memory_allocated; on a CPU, the worker's peak resident
memory (VmHWM, reset through /proc/self/clear_refs) during two steps, minus its resident memory
before the network was built: weights, gradients, optimizer state and activations, as the
process really held them. Results go to benchmarks/results/ as CSV and JSON.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    """One network in one setting. `ours` runs through EfficientNetModule, so its defaults are
    the module's own (channels_last on); the others are built as their libraries document."""

    name: str
    family: str  # ours | torchvision | timm
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    lean_bn_act: bool = False
    fold: bool = False  # inference on the folded network (what validate / test / predict run)


CONFIGS = {
    c.name: c
    for c in [
        Config("torchvision", "torchvision"),
        Config("torchvision-cl", "torchvision", channels_last=True),
        Config("timm", "timm"),
        Config("timm-cl", "timm", channels_last=True),
        Config("timm-cl-compile", "timm", channels_last=True, compile=True),
        Config("ours-nchw", "ours"),
        Config("ours", "ours", channels_last=True),
        Config("ours-folded", "ours", channels_last=True, fold=True),
        Config("ours-compile", "ours", channels_last=True, compile=True),
        Config("ours-checkpointing", "ours", channels_last=True, grad_checkpointing=True),
        Config("ours-lean", "ours", channels_last=True, lean_bn_act=True),
        Config("ours-lean-compile", "ours", channels_last=True, lean_bn_act=True, compile=True),
    ]
}
DEFAULT_CONFIGS = (
    "torchvision",
    "torchvision-cl",
    "timm",
    "timm-cl",
    "ours-nchw",
    "ours",
    "ours-folded",
    "ours-checkpointing",
)
BASELINES = {
    "train_img_s": ("torchvision", "timm-cl"),
    "infer_img_s": ("torchvision", "timm-cl"),
    "train_peak_mb": ("torchvision", "timm-cl"),
}


def build_network(config: Config, variant: str):
    """(callable network, its parameters' module): `ours` through the LightningModule."""
    import timm
    import torchvision

    from effnet_lightning.models.hub import timm_architecture_name

    if config.family == "ours":
        from effnet_lightning.training.module import EfficientNetModule

        module = EfficientNetModule(
            variant,
            num_classes=1000,
            channels_last=config.channels_last,
            compile=config.compile,
            grad_checkpointing=config.grad_checkpointing,
            lean_bn_act=config.lean_bn_act,
            zero_init_head=False,
        )
        # The network as the module runs it; the module's metrics (two 1000-class confusion
        # matrices) are no part of the network's memory.
        if not config.fold:
            return module.network, module.model
        from effnet_lightning.models.inference import fold_batchnorm

        folded = []  # made at the first inference, on the device the network was moved to

        def network(x):
            if module.model.training:
                return module.network(x)
            if not folded:
                folded.append(fold_batchnorm(module.model))
            return folded[0](x)

        return network, module.model
    if config.family == "torchvision":  # its default stochastic depth is 0.2, as ours
        net = getattr(torchvision.models, f"efficientnet_{variant.replace('-', '_')}")()
    else:
        net = timm.create_model(timm_architecture_name(variant, tf=False), drop_path_rate=0.2)
        if config.grad_checkpointing:
            net.set_grad_checkpointing(True)
    if config.channels_last:
        net = net.to(memory_format=_torch().channels_last)
    return (_torch().compile(net) if config.compile else net), net


def _torch():
    import torch

    return torch


def resident_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_resident() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(conn, config: Config, args: argparse.Namespace) -> None:
    """Builds, warms up and measures memory, then answers ("train" | "infer", steps) with the
    seconds they took, until told "stop"."""
    sys.path.insert(0, str(REPO))
    # Every library loaded before the memory baseline, so the baseline counts no library code.
    importlib.import_module("timm")
    importlib.import_module("torchvision")
    importlib.import_module("effnet_lightning.training.module")
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    base_mb = resident_mb("VmRSS")
    net, params = build_network(config, args.variant)
    params.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    optimizer = torch.optim.SGD(params.parameters(), lr=0.01, momentum=0.9)
    bf16 = args.precision == "bf16"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            net(images)

    def timed(step, n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return time.perf_counter() - start

    def peak_mb(step, mode: bool) -> float:
        params.train(mode)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            timed(step, 2)
            return torch.cuda.max_memory_allocated() / 2**20
        reset_peak_resident()
        timed(step, 2)
        return resident_mb("VmHWM") - base_mb

    # Inference first: after training, freed activations stay in the process (the C allocator
    # keeps them) and would count as inference memory. The first step of each is compiling,
    # allocator and oneDNN set-up, reported apart.
    params.eval()
    infer_warmup_s = timed(infer_step, 1)
    timed(infer_step, args.warmup - 1)
    infer_peak = peak_mb(infer_step, False)
    params.train()
    train_warmup_s = timed(train_step, 1)
    timed(train_step, args.warmup - 1)
    info = {
        "train_warmup_s": train_warmup_s,
        "infer_warmup_s": infer_warmup_s,
        "train_peak_mb": peak_mb(train_step, True),
        "infer_peak_mb": infer_peak,
    }
    conn.send(info)
    while True:
        command, n = conn.recv()
        if command == "stop":
            return
        params.train(command == "train")
        conn.send(timed(train_step if command == "train" else infer_step, n))


def run(args: argparse.Namespace) -> list[dict]:
    configs = [CONFIGS[name] for name in args.configs]
    context = mp.get_context("spawn")
    workers = {}
    rows = {}
    for config in configs:  # one at a time, so warm-up and memory are measured undisturbed
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, config, args), daemon=True)
        process.start()
        rows[config.name] = {"config": config.name, **asdict(config), **parent.recv()}
        workers[config.name] = (process, parent)
        print(f"ready: {config.name:<20} first training step {rows[config.name]['train_warmup_s']:.1f} s", flush=True)
    times = {name: {"train": [], "infer": []} for name in workers}
    for repeat in range(args.repeats):
        order = list(workers)[repeat % len(workers) :] + list(workers)[: repeat % len(workers)]  # rotate who goes first
        for command in ("train", "infer"):
            for name in order:
                workers[name][1].send((command, args.steps))
                times[name][command].append(workers[name][1].recv())
    for process, conn in workers.values():
        conn.send(("stop", 0))
        process.join()
    for name, row in rows.items():
        for command in ("train", "infer"):
            rates = [args.batch * args.steps / s for s in times[name][command]]
            row[f"{command}_img_s"] = statistics.median(rates)
            row[f"{command}_img_s_all"] = rates
    for metric, baselines in BASELINES.items():
        for baseline in baselines:
            if baseline in rows:
                for row in rows.values():
                    row[f"{metric}_vs_{baseline}"] = ratio(row, rows[baseline], metric)
    return list(rows.values())


def ratio(row: dict, baseline: dict, metric: str) -> float:
    """Speed: the median of the per-repeat ratios, each of two runs of the same round, so that
    a slow phase of the machine cancels out. Memory: measured once per configuration."""
    if f"{metric}_all" not in row:
        return row[metric] / baseline[metric]
    return statistics.median(a / b for a, b in zip(row[f"{metric}_all"], baseline[f"{metric}_all"]))


def format_table(rows: list[dict]) -> str:
    columns = [
        ("config", "configuration", "{}"),
        ("train_img_s", "train img/s", "{:.2f}"),
        ("train_img_s_vs_torchvision", "vs tv", "{:.2f}x"),
        ("train_img_s_vs_timm-cl", "vs timm-cl", "{:.2f}x"),
        ("infer_img_s", "infer img/s", "{:.2f}"),
        ("infer_img_s_vs_torchvision", "vs tv", "{:.2f}x"),
        ("infer_img_s_vs_timm-cl", "vs timm-cl", "{:.2f}x"),
        ("train_peak_mb", "train MB", "{:.0f}"),
        ("train_peak_mb_vs_torchvision", "vs tv", "{:.2f}x"),
        ("infer_peak_mb", "infer MB", "{:.0f}"),
        ("train_warmup_s", "1st step s", "{:.1f}"),
    ]
    columns = [c for c in columns if c[0] in rows[0]]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="configurations: " + ", ".join(CONFIGS)
    )
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if _torch().cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(DEFAULT_CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    args = parser.parse_args(argv)
    args.warmup = max(1, args.warmup)
    start = time.perf_counter()
    rows = run(args)
    table = format_table(rows)
    settings = f"{args.variant}, {args.size} px, batch {args.batch}, {args.precision}, {args.device}"
    print(f"\n{settings}; medians of {args.repeats} x {args.steps} steps\n{table}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"models-{args.variant}-{args.size}px-batch{args.batch}-{args.precision}-{args.device}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if not k.endswith("_all")], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    result = {"settings": vars(args), "machine": machine(), "seconds": time.perf_counter() - start, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {stem}.csv, {stem}.json ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
