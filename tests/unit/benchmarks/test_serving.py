"""benchmarks/serving.py without its servers: the table it prints from its results, and the one
docs/serving.md shows (the committed results' table, not a copy typed by hand)."""

import importlib.util
import json

from tests.helpers.cli import ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(batch, round_index, rps, p50, p99):
    return {
        "variant": "lite0",
        "path": "onnx",
        "max_batch_size": batch,
        "concurrency": 32,
        "round": round_index,
        "requests_per_s": rps,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def test_the_table_gives_medians_over_rounds_and_the_worst_rounds_ratio():
    rows = [row(8, i, rps, 100 + i, 200 + i) for i, rps in enumerate([60.0, 90.0, 75.0])]
    rows += [row(1, i, rps, 300 + i, 400 + i) for i, rps in enumerate([40.0, 50.0, 60.0])]
    lines = _benchmark().table(rows).splitlines()
    # ratios per round: 1.5, 1.8, 1.25 -> median 1.50, worst 1.25
    assert lines[2] == "| Lite0 | ONNX fp32 | 32 | 75.0 | 50.0 | 1.50x (1.25) | 101 / 201 | 301 / 401 |"
    assert len(lines) == 3


def test_the_serving_page_shows_the_committed_results_table():
    results = json.loads((ROOT / "docs" / "serving" / "results.json").read_text())
    assert _benchmark().table(results["rows"]) in (ROOT / "docs" / "serving.md").read_text()
