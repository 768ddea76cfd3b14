"""The compound-scaling search, end to end through `cli.py scale-search` with tiny budgets."""

import csv

import pytest
import torch
from cli_helpers import ROOT, run_cli

from effnet_lightning import create_model
from effnet_lightning.models.efficientnet import count_gmacs
from effnet_lightning.tools.search import scaled_resolution


@pytest.mark.slow
def test_three_candidate_search_trains_reports_the_best_and_resumes(small_root, tmp_path):
    args = [
        "scale-search",
        "--config",
        ROOT / "configs" / "debug.yaml",
        "--alpha",
        "1.1",
        "1.3",
        "--beta",
        "1.1",
        "1.2",
        "--gamma",
        "1.0",
        "--base-resolution",
        "64",
        "--epochs",
        "1",
        "--output-dir",
        "search",
        "--",
        "--data.root",
        small_root,
        "--trainer.limit_train_batches",
        "2",
    ]
    out = run_cli([*args[:1], "--workers", "2", *args[1:]], tmp_path)  # two fits at a time
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"b0", "phi1_a1.1_b1.1_g1", "phi1_a1.1_b1.2_g1", "phi1_a1.3_b1.1_g1", "phi1_a1.3_b1.2_g1"}
    base_gmacs = count_gmacs(create_model("b0"), 64)
    trained = []
    for name, row in rows.items():
        # the FLOPs ratio, counted again here on the network the variant name builds
        resolution = scaled_resolution(64, float(row["gamma"]), 1.0 if name != "b0" else 0.0)
        assert int(row["resolution"]) == resolution
        ratio = count_gmacs(create_model(name), resolution) / base_gmacs
        assert float(row["flops_ratio"]) == pytest.approx(ratio, abs=1e-3)
        if name != "b0":  # the baseline is always trained, for reference
            assert (row["within_budget"] == "True") == (abs(ratio - 2) <= 0.3), name
        if row["within_budget"] == "True":
            assert row["status"] == "trained" and 0 <= float(row["val_acc"]) <= 1
            checkpoint = torch.load(tmp_path / row["checkpoint"], weights_only=True)
            hp = checkpoint["hyper_parameters"]  # trained through fit, at the candidate's size
            assert hp["variant"] == name and hp["preprocessing"]["crop_size"] == resolution
            if name != "b0":
                trained.append(row)
        else:
            assert row["status"] == "out of budget" and row["val_acc"] == ""
    print({name: (round(float(r["flops_ratio"]), 2), r["val_acc"]) for name, r in rows.items()})
    assert len(trained) == 3  # (1.1, 1.1, 1.0) is out of budget: 1.69x
    best = max(trained, key=lambda r: (float(r["val_acc"]), -float(r["gmacs"])))
    report = (tmp_path / "search" / "report.md").read_text()
    assert f"**Best: alpha = {float(best['alpha']):g}, beta = {float(best['beta']):g}, gamma = 1**" in report
    assert f"val/acc {float(best['val_acc']):.4f}" in out.stdout
    assert (tmp_path / "search" / "accuracy_vs_flops.png").stat().st_size > 10_000
    assert out.stdout.count(": trained, val/acc") == 4

    again = run_cli(args, tmp_path)  # one at a time now; finished candidates are not trained again
    assert again.stdout.count(": cached, val/acc") == 4 and ": trained" not in again.stdout
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        assert {r["variant"]: r["val_acc"] for r in csv.DictReader(f)} == {n: r["val_acc"] for n, r in rows.items()}


def test_bad_search_arguments_are_one_line_errors(tmp_path):
    out = run_cli(["scale-search", "--config", "missing.yaml"], tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == "error: --config missing.yaml: no such file"
    out = run_cli(["scale-search", "--tolerance", "2"], tmp_path, check=False)
    assert out.stderr.strip().splitlines()[-1] == "error: need --budget > 0, 0 < --tolerance < 1 and --workers >= 1"
    for arg in ("--data.image_size=128", "--config"):
        out = run_cli(["scale-search", "--", arg, "x"], tmp_path, check=False)
        assert out.stderr.strip().splitlines()[-1].startswith(f"error: {arg.split('=')[0]} is set per candidate by")
