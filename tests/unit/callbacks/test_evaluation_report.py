"""The per-class evaluation report, the confusion-matrix figure and the precision-recall figure."""

import pytest
import torch

from effnet_lightning.callbacks.evaluation_report import (
    confusion_figure,
    multilabel_rows,
    per_class_rows,
    precision_recall_figure,
)


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


def test_the_precision_recall_figure_draws_each_class_curve_and_its_threshold():
    # 5 images, 3 classes; the last class has no image and is left out of the picture.
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.2], [0.4, 0.6, 0.3], [0.3, 0.1, 0.4], [0.2, 0.5, 0.1]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]).float()
    rows = multilabel_rows(probs, targets, torch.tensor([0.5, 0.55, 0.5]), ["cat", "dog", "owl"])
    cat, dog, owl = rows
    assert (cat["images"], dog["images"], owl["images"]) == (3, 2, 0)
    assert (cat["precision"], cat["recall"]) == (1.0, pytest.approx(2 / 3))  # 0.9, 0.8 called; 0.3 missed
    assert (dog["precision"], dog["recall"], dog["threshold"]) == (1.0, 1.0, pytest.approx(0.55))
    assert cat["ap"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    fig = precision_recall_figure(probs, targets, rows, "val")
    ax = fig.axes[0]
    curves, dots = ax.lines[0::2], ax.lines[1::2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"cat (AP {cat['ap']:.3f})", "dog (AP 1.000)"]
    # cat called from the top down: 0.9 (1/1), 0.8 (2/2), 0.4 (2/3), 0.3 (3/4), 0.2 (3/5)
    assert list(curves[0].get_xdata()) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert list(curves[0].get_ydata()) == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert (list(dots[0].get_xdata()), list(dots[0].get_ydata())) == ([pytest.approx(2 / 3)], [1.0])
    assert dots[0].get_color() == curves[0].get_color() and len(ax.lines) == 4
