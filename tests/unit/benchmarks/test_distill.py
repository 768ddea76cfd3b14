"""benchmarks/distill.py without its fits: its summary and its checks."""

import importlib.util
import json
import math

from tests.helpers.cli import ROOT


def _distill_benchmark():
    spec = importlib.util.spec_from_file_location("distill_benchmark", ROOT / "benchmarks" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs(accs: list[float], rate: float) -> dict:
    return {str(seed): {"acc": acc, "img_s": rate, "best": "x.ckpt"} for seed, acc in enumerate(accs, 1)}


def test_the_summary_measures_the_gap_closed_against_the_seed_spread_with_the_teachers_step_cost():
    bench = _distill_benchmark()
    results = {
        "digits": {
            "teacher": {"acc": 0.90, "img_s": 50.0, "best": "t.ckpt"},
            "students": {
                # a gap of 0.30 (30 spreads of 0.01): distilled closes (0.78 - 0.60) / 0.30 = 60%
                "b0": {"alone": runs([0.60, 0.59, 0.60], 100.0), "distilled": runs([0.78, 0.78, 0.77], 62.5)},
                # a gap of 0.02 under three spreads of 0.04: not held to half; a little worse, within the spread
                "lite0": {"alone": runs([0.88, 0.84, 0.86], 80.0), "distilled": runs([0.85, 0.85, 0.84], 50.0)},
            },
            "int8": {"fp32_accuracy": 0.85, "int8_accuracy": 0.84, "int8_img_s": 410.0},
        }
    }
    summary = bench.summarise(results)["digits"]
    b0, lite0 = summary["students"]["b0"], summary["students"]["lite0"]
    assert math.isclose(b0["gap"], 0.30) and math.isclose(b0["closed"], 0.6) and math.isclose(b0["spread"], 0.01)
    assert b0["gap_counts"] and b0["closes_half"] and b0["never_worse"]
    assert math.isclose(lite0["spread"], 0.04) and not lite0["gap_counts"] and lite0["closes_half"] is None
    assert lite0["never_worse"] and math.isclose(lite0["distilled"], 0.85)
    costs = {"b0": {"alone": {"img_s": [100.0]}, "lite2": {"macs_ratio": 1.47, "step_cost": 1.6, "img_s": [62.5]}}}
    text = bench.table(bench.summarise(results), {"lite2": 0.0531, "lite0": 0.0319}, costs)
    assert (
        "| digits | 0.900 | b0 | - | 0.600 | 0.780 | 60% of 0.300 | 0.010 | 1.60x | - | never worse; closes half |"
        in text
    )
    assert "| - | 0.840, 410 | never worse; gap under 3 spreads |" in text  # lite0 (not timed), its INT8 file
    assert "| b0 | lite2 | 1.47x | 1.60x |" in bench.cost_table(costs)
    assert "lite2 53.1 M, lite0 31.9 M" in text
    # a distilled student below its solo self by more than the spread fails the check
    results["digits"]["students"]["b0"]["distilled"] = runs([0.55, 0.55, 0.56], 60.0)
    assert not bench.summarise(results)["digits"]["students"]["b0"]["never_worse"]


def test_the_recipe_rows_come_from_the_sweeps_runs_seed_by_seed(tmp_path):
    """B0's runs alone and under its set's recipe are read from sweep.json (seed 1 under the
    sweep's own key), nothing fitted again, and join the table as rows of their own."""
    bench = _distill_benchmark()
    epochs, settings = bench.RECIPES["shapes-20"]
    teacher = {"acc": 0.98, "img_s": 50.0, "best": "t.ckpt"}
    results = {
        "shapes-20": {
            "teacher": teacher,
            "students": {"b0": {"alone": runs([0.1] * 3, 100.0), "distilled": runs([0.1] * 3, 80.0)}},
        }
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = {}
    for seed, alone, distilled in [(1, 0.24, 0.98), (2, 0.22, 0.95), (3, 0.25, 0.90)]:
        done[bench.sweep_key("shapes-20", epochs, "alone", seed)] = alone
        done[bench.sweep_key("shapes-20", epochs, settings, seed)] = distilled
    (tmp_path / "sweep.json").write_text(json.dumps(done))
    assert list(bench.recipe(tmp_path, ["digits", "shapes-20"], [1, 2, 3], fit_missing=False)) == ["shapes-20"]
    assert bench.recipe(tmp_path, ["shapes-20"], [1, 2, 3, 4], fit_missing=False) == {}  # seed 4 has not run
    summary = bench.summarise(bench.with_schedules(results, tmp_path, 5, 10, [1, 2, 3]))["shapes-20"]["students"]
    b0 = summary["b0, recipe"]
    assert math.isclose(b0["alone"], 0.24) and math.isclose(b0["distilled"], 0.95) and math.isclose(b0["spread"], 0.08)
    assert math.isclose(b0["closed"], (0.95 - 0.24) / (0.98 - 0.24)) and b0["closes_half"]
    assert b0["schedule"] == "120 epochs; alpha 1, T 1, unlabelled images (share 0.75)"
    assert summary["b0"]["schedule"] == "10 epochs; the defaults"
    text = bench.table({"shapes-20": {"teacher": 0.98, "students": summary}})
    assert "| b0, recipe | 120 epochs; alpha 1, T 1, unlabelled images (share 0.75) | 0.240 | 0.950 |" in text
