"""The per-class evaluation report and the confusion-matrix figure."""

import pytest
import torch

from effnet_lightning.callbacks.evaluation_report import confusion_figure, per_class_rows


def test_per_class_rows_from_a_confusion_matrix():
    # rows: true class, columns: predicted
    matrix = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    rows = per_class_rows(matrix, ["a", "b", "c"])
    a, b, c = rows
    assert (a["images"], a["correct"], b["images"], b["correct"]) == (10, 8, 4, 3)
    assert a["accuracy"] == pytest.approx(0.8) and a["precision"] == pytest.approx(8 / 9)
    assert a["f1"] == pytest.approx(2 * 0.8 * (8 / 9) / (0.8 + 8 / 9))
    assert b["accuracy"] == pytest.approx(0.75) and b["precision"] == pytest.approx(0.6)
    assert c["images"] == 0 and c["accuracy"] != c["accuracy"] and c["f1"] == 0.0  # nan: no images of c


def test_confusion_figure_draws_every_class(tmp_path):
    fig = confusion_figure(torch.tensor([[5, 1], [0, 4]]), ["cat", "dog"], "val")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog"]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1", "4", "5"]
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
