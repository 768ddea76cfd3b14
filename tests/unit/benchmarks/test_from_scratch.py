"""benchmarks/from_scratch.py without its fits: the kernel paths it compares, its summary of the
runs, and resuming from its results file."""

import importlib.util
import json

import pytest
import torch

from tests.helpers.cli import ROOT


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("from_scratch_benchmark", ROOT / "benchmarks" / "from_scratch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "native, capped",
    [
        ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
        ("AVX2", {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}),
    ],
)
def test_the_capped_kernel_path_is_one_instruction_set_below_the_native_one(bench, monkeypatch, native, capped):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: native)
    assert bench.kernel_paths() == {"native": {}, "capped": capped}


def test_the_summary_reports_median_worst_and_spread_of_every_run(bench):
    curve = [0.1, 0.5, 0.9499999881, 0.97]  # passes 0.95 at epoch 3: 285 of 300, as float32 logs it
    results = {
        "machine": "test CPU",
        "torch": "x",
        "runs": {
            "demo/default/seed42/native": {"val_acc": curve, "seconds": 200.0, "test_acc": 0.95},
            "demo/default/seed42/capped": {"val_acc": [0.1, 0.9, 0.93], "seconds": 260.0, "test_acc": 0.91},
            "demo/default/seed1/native": {"val_acc": [0.2, 0.96, 0.99], "seconds": 230.0, "test_acc": 0.98},
        },
    }
    summary = bench.summarise(results)["demo/default"]
    assert summary["runs"] == 3
    assert summary["best_val_acc"] == pytest.approx({"median": 0.97, "worst": 0.93, "spread": 0.06})
    assert summary["epoch_passed"] == {"median": 2.5, "worst": None}  # one run never passed
    assert summary["seconds"] == {"median": 230.0, "worst": 260.0}
    assert summary["test_acc"] == {"median": 0.95, "worst": 0.91}
    table = bench.table(results)
    assert "| demo / default | 42 | capped | 0.930 | - | 0.910 | 4.3 min |" in table
    assert "| demo/default | 3 | 0.970 / 0.930 / 0.060 | 2.5 / never | 0.950 / 0.910 | 3.8 / 4.3 min |" in table


def test_started_again_it_runs_only_what_its_results_file_lacks(bench, tmp_path, monkeypatch):
    same = {"recipe": bench.recipe_of("demo", "default"), "machine": bench.cpu_name()}
    done = {"val_acc": [0.5], "seconds": 1.0, "test_acc": 0.5, **same}
    stale = {**done, "recipe": {**same["recipe"], "settings": {"trainer": {"max_epochs": 50}}}}
    runs = {"demo/default/seed42/native": done, "demo/default/seed1/native": stale}
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    calls = []

    def fake_run(name, recipe, seed, path, data_dir):
        calls.append(f"{name}/{recipe}/seed{seed}/{path}")
        return {"val_acc": [0.96], "seconds": 2.0, "test_acc": 0.9}

    monkeypatch.setattr(bench, "run", fake_run)
    bench.main(["--sets", "demo", "--seeds", "42", "1", "--out", str(tmp_path)])
    # the stale run (another recipe) runs again
    assert calls == ["demo/default/seed42/capped", "demo/default/seed1/native", "demo/default/seed1/capped"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"]["demo/default/seed42/native"] == done and len(saved["runs"]) == 4
    assert saved["runs"]["demo/default/seed1/native"]["recipe"] == same["recipe"]
    assert saved["machine"] == bench.cpu_name()
