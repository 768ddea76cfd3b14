"""The compound-scaling search, end to end through `cli.py scale-search` with tiny budgets."""

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from effnet_lightning import create_model
from effnet_lightning.models.efficientnet import count_gmacs
from effnet_lightning.tools.search import scaled_resolution
from tests.helpers.cli import ROOT, run_cli
from tests.helpers.fault_doc import expect
from tests.helpers.label_sets import write_set


@pytest.mark.slow
def test_search_trains_each_distinct_network_once_reports_the_best_against_the_seed_spread_and_resumes(
    small_root, tmp_path
):
    args = [
        "scale-search",
        "--config",
        ROOT / "configs" / "debug.yaml",
        "--alpha",
        "1.1",
        "1.2",
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
        "--baseline-seeds",
        "1",
        "2",
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
        rows = list(csv.DictReader(f))
    baselines = [r for r in rows if r["variant"] == "b0"]
    rows = {r["variant"]: r for r in rows if r["variant"] != "b0"}
    assert [r["seed"] for r in baselines] == ["1", "2"] and all(r["status"] == "trained" for r in baselines)
    assert set(rows) == {f"phi1_a{a}_b{b}_g1" for a in ("1.1", "1.2", "1.3") for b in ("1.1", "1.2")}
    base_gmacs = count_gmacs(create_model("b0"), 64)
    trained = []
    for name, row in rows.items():
        # the FLOPs ratio, counted again here on the network the variant name builds
        assert int(row["resolution"]) == scaled_resolution(64, float(row["gamma"]), 1.0) == 64
        ratio = count_gmacs(create_model(name), 64) / base_gmacs
        assert float(row["flops_ratio"]) == pytest.approx(ratio, abs=1e-3)
        assert (row["within_budget"] == "True") == (abs(ratio - 2) <= 0.3), name
        if row["status"] == "trained":
            assert row["seed"] == "1" and 0 <= float(row["score"]) <= 1
            checkpoint = torch.load(tmp_path / row["checkpoint"], weights_only=True)
            hp = checkpoint["hyper_parameters"]  # trained through fit, at the candidate's size
            assert hp["variant"] == name and hp["preprocessing"]["crop_size"] == 64
            trained.append(row)
        elif row["within_budget"] == "False":
            assert row["status"] == "out of budget" and row["score"] == ""
    # alpha 1.1 and 1.2 round B0's repeats to the same counts: one network, trained once
    twin = rows["phi1_a1.2_b1.2_g1"]
    assert twin["status"] == "same network as phi1_a1.1_b1.2_g1" and twin["wall_s"] == ""
    assert twin["score"] == rows["phi1_a1.1_b1.2_g1"]["score"] and twin["params"] == rows["phi1_a1.1_b1.2_g1"]["params"]
    print({name: (round(float(r["flops_ratio"]), 2), r["status"], r["score"]) for name, r in rows.items()})
    assert len(trained) == 3  # (1.1, 1.1, 1) and (1.2, 1.1, 1) are out of budget: 1.69x
    best = max(trained, key=lambda r: (float(r["score"]), -float(r["gmacs"])))
    report = (tmp_path / "search" / "report.md").read_text()
    assert f"**Best: alpha = {float(best['alpha']):g}, beta = {float(best['beta']):g}, gamma = 1**" in report
    scores = sorted(float(r["score"]) for r in baselines)
    assert f"median {sum(scores) / 2:.4f}, seed spread (max - min) {scores[1] - scores[0]:.4f}" in report
    assert f"{float(best['score']) - sum(scores) / 2:+.4f}" in report  # the best against the baseline's median
    assert f"val/acc {float(best['score']):.4f}" in out.stdout
    assert out.stdout.count(": trained, val/acc") == 5  # 2 baseline seeds + 3 distinct networks

    again = run_cli(args, tmp_path)  # one at a time now; finished candidates are not trained again
    assert again.stdout.count(": cached, val/acc") == 5 and ": trained" not in again.stdout
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        again_rows = {r["variant"]: r["score"] for r in csv.DictReader(f) if r["variant"] != "b0"}
    assert again_rows == {n: r["score"] for n, r in rows.items()}


@pytest.mark.slow
def test_a_search_stopped_by_sigterm_to_its_group_resumes_the_stopped_fit_and_skips_finished_ones(small_root, tmp_path):
    """SIGTERM to the search's process group (as `timeout` or a scheduler sends it) while the
    second of three fits runs: the search passes it on, that fit stops at a batch boundary with
    its last.ckpt, the third never starts, exit 143. The same command again keeps the first
    fit's result, resumes the second from its checkpoint in the same folder and trains the third."""
    args = ["scale-search", "--config", ROOT / "configs" / "debug.yaml", "--alpha", "1.0", "--beta", "1.0"]
    args += ["--gamma", "1.0", "1.15", "--budget", "1.2", "--tolerance", "0.5", "--base-resolution", "64"]
    args += ["--output-dir", "search", "--", "--data.root", small_root, "--data.num_workers", "1"]
    args += ["--trainer.callbacks+=tests.helpers.probes.GroupSignalAtStep"]
    stopped_fit = tmp_path / "search" / "candidates" / "phi1_a1_b1_g1"
    env = {**os.environ, "PROBE_STEP": "2", "PROBE_SIGNAL": "SIGTERM", "PROBE_GROUP": "parent"}
    env["PROBE_IN"] = str(Path("search", "candidates", stopped_fit.name))
    first = run_cli(args, tmp_path, check=False, env=env)
    assert first.returncode == 128 + signal.SIGTERM, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Traceback" not in first.stdout + first.stderr
    assert "scale-search: stopped by SIGTERM; run the same command again to resume" in first.stdout
    assert "b0: trained" in first.stdout and "phi1_a1_b1_g1: stopped" in first.stdout
    assert "phi1_a1_b1_g1.15: not run" in first.stdout
    assert not (tmp_path / "search" / "report.md").exists()
    record = json.loads((stopped_fit / "latest_fit.json").read_text())
    assert record["finished"] is False
    assert torch.load(tmp_path / record["last_model_path"], weights_only=True)["global_step"] == 2
    baseline_log = (tmp_path / "search" / "candidates" / "baseline" / "fit.log").read_text()

    again = run_cli(args, tmp_path, env=env)
    assert "b0: cached" in again.stdout and "phi1_a1_b1_g1: trained" in again.stdout
    assert "phi1_a1_b1_g1.15: trained" in again.stdout
    assert (tmp_path / "search" / "candidates" / "baseline" / "fit.log").read_text() == baseline_log
    resumed = json.loads((stopped_fit / "latest_fit.json").read_text())
    assert resumed["finished"] is True  # in the stopped fit's checkpoint folder:
    assert (tmp_path / resumed["last_model_path"]).resolve() == (tmp_path / record["last_model_path"]).resolve()
    record = resumed
    assert torch.load(tmp_path / record["last_model_path"], weights_only=True)["global_step"] == 4
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        statuses = {r["variant"]: r["status"] for r in csv.DictReader(f)}
    assert statuses == {"b0": "cached", "phi1_a1_b1_g1": "trained", "phi1_a1_b1_g1.15": "trained"}
    expect("search-sigterm", "scale-search: stopped by SIGTERM; run the same command again to resume", "143")
    expect("search-sigterm", "stopped", "not run", "cached", "last.ckpt")


def test_bad_search_arguments_are_one_line_errors(tmp_path):
    out = run_cli(["scale-search", "--config", "missing.yaml"], tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == "error: --config missing.yaml: no such file"
    out = run_cli(["scale-search", "--tolerance", "2"], tmp_path, check=False)
    assert out.stderr.strip().splitlines()[-1] == "error: need --budget > 0, 0 < --tolerance < 1 and --workers >= 1"
    for arg in ("--data.image_size=128", "--config"):
        out = run_cli(["scale-search", "--", arg, "x"], tmp_path, check=False)
        assert out.stderr.strip().splitlines()[-1].startswith(f"error: {arg.split('=')[0]} is set per candidate by")


@pytest.mark.slow
def test_the_slurm_launcher_trains_each_candidate_as_a_submitit_job_into_the_same_cache_and_report(
    small_root, tmp_path
):
    """`--launcher slurm` through submitit's local executor (`submitit-local`: the same jobs, no
    cluster): every fit its own job, results in the per-candidate cache the local pool reads."""
    args = ["scale-search", "--config", ROOT / "configs" / "debug.yaml", "--alpha", "1.3", "--beta", "1.1"]
    args += ["--gamma", "1.0", "--base-resolution", "64", "--epochs", "1", "--output-dir", "search"]
    fit = ["--", "--data.root", small_root, "--trainer.limit_train_batches", "2"]
    out = run_cli([*args, "--launcher", "submitit-local", "--slurm-gpus", "0", *fit], tmp_path)
    assert "scale-search: submitted 2 jobs (" in out.stdout
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"b0", "phi1_a1.3_b1.1_g1"}
    assert all(r["status"] == "trained" and 0 <= float(r["score"]) <= 1 for r in rows.values())
    candidate = rows["phi1_a1.3_b1.1_g1"]
    hp = torch.load(tmp_path / candidate["checkpoint"], weights_only=True)["hyper_parameters"]
    assert hp["variant"] == "phi1_a1.3_b1.1_g1" and hp["preprocessing"]["crop_size"] == 64
    job_logs = sorted((tmp_path / "search" / "jobs").glob("*_result.pkl"))
    assert len(job_logs) == 2  # submitit's own record of each job
    report = (tmp_path / "search" / "report.md").read_text()
    assert f"{float(candidate['score']):.4f}" in report

    again = run_cli([*args, *fit], tmp_path)  # the local pool finds the jobs' results in the cache
    assert again.stdout.count(": cached, val/acc") == 2 and ": trained" not in again.stdout
    again = run_cli([*args, "--launcher", "submitit-local", "--slurm-gpus", "0", *fit], tmp_path)
    assert again.stdout.count(": cached, val/acc") == 2 and "submitted" not in again.stdout  # no job for those

    refused = run_cli([*args, "--launcher", "slurm", *fit], tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "error: --launcher slurm: no sbatch here; run scale-search on a SLURM login node, or use --launcher local"
    )


@pytest.mark.slow
def test_a_search_on_multi_label_data_scores_the_candidates_by_val_map(tmp_path):
    label_file = write_set(tmp_path / "set", 48, seed=3, splits=True)
    args = ["scale-search", "--config", ROOT / "configs" / "debug.yaml", "--alpha", "1.3", "--beta", "1.1"]
    args += ["--gamma", "1.0", "--base-resolution", "32", "--epochs", "1", "--output-dir", "search", "--"]
    out = run_cli([*args, "--data.label_file", label_file, "--trainer.limit_train_batches", "2"], tmp_path)
    with open(tmp_path / "search" / "results.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"b0", "phi1_a1.3_b1.1_g1"}
    for row in rows.values():  # each score is its fit's best val/map, as the checkpoint's name gives it
        assert row["status"] == "trained" and row["metric"] == "val/map" and row["mode"] == "max"
        assert f"map{float(row['score']):.4f}.ckpt" in row["checkpoint"]
    report = (tmp_path / "search" / "report.md").read_text()
    assert "| FLOPs ratio | val/map | vs baseline |" in report and "val/acc" not in report
    assert out.stdout.count(": trained, val/map") == 2 and "best alpha=1.3 beta=1.1 gamma=1, val/map" in out.stdout
