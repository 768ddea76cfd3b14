"""The recipe configs, run for a few real steps through the CLI on the demo images: optimizer,
learning rate at chosen steps, weight decay per parameter, EMA in validation and checkpoints;
MixUp / CutMix targets; the learning-rate scaling rule."""

import csv
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.cli import CSV, ROOT, TINY, printed_metric, run_cli

# 4 batches of 8 per epoch, 2 accumulated per optimizer step: 2 steps per epoch, 14 in all,
# a global batch of 16.
SHORT = [
    "--trainer.max_epochs",
    "7",
    "--trainer.limit_train_batches",
    "4",
    "--trainer.accumulate_grad_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
]


def paper_lr(step: int) -> float:
    peak = 0.016 * 16 / 256  # 0.016 per 256 images, scaled to the global batch
    warmup = 5 * 2  # 5 epochs of 2 steps
    return peak * ((step + 1) / warmup if step < warmup else 0.97 ** math.floor(step / (2.4 * 2)))


def modern_lr(step: int) -> float:
    peak = 0.5 * 16 / 1024
    warmup, total = 10, 14
    return peak * (
        (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    )


RECIPES = {
    "paper": {
        "optimizer": "RMSpropTF",
        "defaults": {"alpha": 0.9, "eps": 1e-3, "momentum": 0.9},
        "lr": paper_lr,
        "weight_decay": 1e-5,
        "ema_updates": 14,
    },
    "modern": {
        "optimizer": "SGD",
        "defaults": {"momentum": 0.9, "nesterov": False},
        "lr": modern_lr,
        "weight_decay": 2e-5,
        "ema_updates": 1,
    },  # every 32 steps: step 0 only
}


def last_logged(metrics_csv, key: str) -> float:
    with open(metrics_csv, newline="") as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    assert values, key
    return values[-1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_optimizer_schedule_weight_decay_and_ema(recipe, small_root, tmp_path):
    spec = RECIPES[recipe]
    probe_file = tmp_path / "probe.json"
    out = run_cli(
        [
            "fit",
            "--config",
            ROOT / "configs" / "recipes" / f"{recipe}.yaml",
            "--data.root",
            small_root,
            *TINY,
            *CSV,
            *SHORT,
            "--trainer.callbacks+=tests.helpers.probes.RecipeProbe",
        ],
        tmp_path,
        env={**os.environ, "PROBE_FILE": str(probe_file)},
    )
    probe = json.loads(probe_file.read_text())
    assert probe["optimizer"] == spec["optimizer"] and probe["accumulate"] == 2
    assert {k: probe["defaults"][k] for k in spec["defaults"]} == spec["defaults"]
    expected = [spec["lr"](s) for s in range(14)]
    print(f"{recipe}: lr at steps 0, 9 (end of warm-up), 10, 13: {[round(probe['lrs'][s], 7) for s in (0, 9, 10, 13)]}")
    assert probe["lrs"] == pytest.approx(expected, rel=1e-6)
    assert "global batch 16 (batch 8 x 1 devices x 2 accumulated)" in out.stdout + out.stderr
    for group in probe["groups"]:
        for name in group["params"]:
            no_decay = name.endswith(".bias") or ".bn." in name
            assert group["weight_decay"] == (0.0 if no_decay else spec["weight_decay"]), name
    assert sum(len(g["params"]) for g in probe["groups"]) > 200

    # EMA: the checkpoint's weights are the average, the raw ones are kept for resuming
    record = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())
    last = tmp_path / record["last_model_path"]
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 14  # "last" is the final state, whether or not val/acc improved
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert int(checkpoint["averaging_state"]["n_averaged"]) == spec["ema_updates"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())
    # ... and validation ran on the average: validating each set of weights again reproduces
    # val/loss (EMA) and val/loss_raw as logged during fit
    metrics_csv = next((tmp_path / "runs").glob("version_*/metrics.csv"))
    logged_ema, logged_raw = last_logged(metrics_csv, "val/loss"), last_logged(metrics_csv, "val/loss_raw")
    assert logged_ema != pytest.approx(logged_raw, abs=1e-6)
    checkpoint["state_dict"] = raw
    torch.save(checkpoint, tmp_path / "raw.ckpt")
    again = ["--data.root", small_root, *TINY, *CSV, "--trainer.limit_val_batches", "2"]
    assert printed_metric(
        run_cli(["validate", "--ckpt_path", last, *again], tmp_path).stdout, "val/loss"
    ) == pytest.approx(logged_ema, abs=1e-5)
    assert printed_metric(
        run_cli(["validate", "--ckpt_path", tmp_path / "raw.ckpt", *again], tmp_path).stdout, "val/loss"
    ) == pytest.approx(logged_raw, abs=1e-5)
    assert json.loads((tmp_path / "runs" / "latest_fit.json").read_text()) == record  # validate leaves it alone
    # export writes the EMA weights
    run_cli(
        ["export", "--ckpt_path", last, "--formats", "[safetensors]", "--output_dir", tmp_path / "export", *CSV],
        tmp_path,
    )
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert all(torch.equal(exported[k], ema[f"model.{k}"]) for k in exported) and len(exported) == len(
        [k for k in ema if k.startswith("model.")]
    )
    if recipe == "modern":  # MixUp / CutMix: soft targets reached the network
        targets = torch.tensor(probe["first_targets"])
        assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
        assert (targets.max(1).values < 1).any()
