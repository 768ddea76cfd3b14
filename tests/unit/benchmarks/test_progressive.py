"""benchmarks/progressive.py without its fits: its plot and its time-to-accuracy measurement."""

import importlib.util

import pytest
from PIL import Image

from tests.helpers.cli import ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("progressive_benchmark", ROOT / "benchmarks" / "progressive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_plots_every_run_and_measures_time_to_the_fixed_runs_best(tmp_path):
    bench = _benchmark()

    def curve(seconds, accs):
        return [
            {"epoch": i, "seconds": s, "val/acc": a, "val/acc@72": a + 0.01}
            for i, (s, a) in enumerate(zip(seconds, accs))
        ]

    results = {
        "fixed": {"0": curve([60, 120, 180], [0.3, 0.6, 0.9]), "1": curve([60, 120, 180], [0.2, 0.8, 0.7])},
        "progressive": {"0": curve([40, 80, 120], [0.2, 0.9, 0.95]), "1": curve([40, 80, 120], [0.1, 0.5, 0.7])},
    }
    summary = bench.summarise(results)
    assert summary["fixed"]["median_best_val_acc"] == pytest.approx(0.85)
    # seed 0: the fixed best (0.9) at 180 s, progressive reaches it at 80 s; seed 1: 0.8 never reached
    assert summary["progressive"]["seconds_to_fixed_best"] == {"0": 80, "1": None}
    assert summary["progressive"]["speedup_to_fixed_best"] == [pytest.approx(180 / 80)]
    assert summary["fixed"]["eval_size_gain_last_epoch"]["val/acc@72"] == pytest.approx(0.01)
    fig = bench.plot(results, tmp_path / "curves.png")
    lines = {line.get_gid(): line.get_xydata().ravel().tolist() for line in fig.axes[0].lines}
    assert lines["progressive-seed0"] == pytest.approx([40 / 60, 0.2, 80 / 60, 0.9, 2.0, 0.95])
    assert lines["fixed-seed1"] == pytest.approx([1.0, 0.2, 2.0, 0.8, 3.0, 0.7])
    assert len(lines) == 4 and Image.open(tmp_path / "curves.png").size == (700, 450)
