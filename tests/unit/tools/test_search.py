"""The scaling search's parts: the base resolution, the report and the plot."""

import pytest

from effnet_lightning.data import demo
from effnet_lightning.tools.search import Candidate, base_resolution_of, plot, write_report


def test_the_base_resolution_follows_the_data_the_fits_train_on(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text("data:\n  batch_size: 8\n")
    assert base_resolution_of([str(config)]) == demo.FIT_SETTINGS["data"]["image_size"] == 64  # the demo data
    assert base_resolution_of([str(config)], ["--data.root", "images"]) == 224  # B0's own
    config.write_text("data:\n  root: images\n  image_size: 96\n")
    assert base_resolution_of([str(config)]) == 96


@pytest.mark.parametrize("metric", ["val/acc", "val/map"])
def test_the_report_and_plot_show_one_point_per_network_and_the_baseline_spread(tmp_path, metric):
    def candidate(alpha, beta, acc, gmacs, network, status="trained", seed=1):
        c = Candidate(f"a{alpha}_b{beta}", alpha, beta, 1.0, 1.0, 64, 1, gmacs, gmacs / 0.05, True, acc, 10.0, status)
        c.seed, c.architecture, c.metric = seed, (network,), metric
        return c

    baselines = [candidate(1.0, 1.0, acc, 0.05, "b0", seed=s) for s, acc in [(1, 0.40), (2, 0.30), (3, 0.60)]]
    for b in baselines:
        b.variant = "b0"
    one = candidate(1.1, 1.2, 0.45, 0.11, "n1")
    twin = candidate(1.2, 1.2, 0.45, 0.11, "n1", status="same network as a1.1_b1.2")
    two = candidate(1.3, 1.1, 0.35, 0.09, "n2")
    settings = {"phi": 1.0, "budget": 2.0, "tolerance": 0.15, "base_resolution": 64, "fit": ["--config c.yaml"]}
    best = write_report(tmp_path, settings, baselines, [one, twin, two])
    assert best is one
    report = (tmp_path / "report.md").read_text()
    assert (
        f"{metric} 0.4000 (seed 1), 0.3000 (seed 2), 0.6000 (seed 3): median 0.4000, seed spread (max - min) 0.3000"
        in report
    )
    assert "| 0.4500 | +0.0500 |" in report and "| 0.3500 | -0.0500 |" in report
    assert "0.4500 (same network as a1.1_b1.2) | +0.0500 |" in report
    assert "leads the next-best distinct score by 0.1000, within that spread" in report
    assert f"| FLOPs ratio | {metric} | vs baseline |" in report and f"({metric} 0.4500 at" in report

    fig = plot(tmp_path / "plot.png", baselines, [one, twin, two], best)
    (ax,) = fig.axes
    assert ax.get_ylabel() == f"best {metric}"
    points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert points["candidates (phi = 1)"] == [[0.11, 0.45], [0.09, 0.35]]  # the twin shares its network's point
    assert points["baseline (phi = 0), 3 seeds"] == [[0.05, 0.4], [0.05, 0.3], [0.05, 0.6]]
    assert points["best"] == [[0.11, 0.45]]
    assert [t.get_text() for t in ax.texts] == ["1.1/1.2, 1.2, 1", "1.3, 1.1, 1"]


def test_a_monitor_to_minimise_ranks_the_lowest_score_first(tmp_path):
    """`--checkpoint.monitor val/loss` (mode min): the lowest loss is the best candidate and heads
    the table, and its lead over the next-best is counted as a lead."""

    def candidate(name, loss, gmacs, seed=1):
        c = Candidate(name, 1.0, 1.0, 1.0, 1.0, 64, 1, gmacs, gmacs / 0.05, True, loss, 10.0, "trained")
        c.seed, c.architecture, c.metric, c.mode = seed, (name,), "val/loss", "min"
        return c

    baselines = [candidate("b0", loss, 0.05, seed=s) for s, loss in [(1, 0.90), (2, 0.80)]]
    low, high = candidate("low", 0.50, 0.11), candidate("high", 0.70, 0.09)
    settings = {"phi": 1.0, "budget": 2.0, "tolerance": 0.15, "base_resolution": 64, "fit": ["--config c.yaml"]}
    assert write_report(tmp_path, settings, baselines, [high, low]) is low
    report = (tmp_path / "report.md").read_text()
    assert report.index("| 0.5000 |") < report.index("| 0.7000 |")
    assert "leads the next-best distinct score by 0.2000, beyond that spread" in report
