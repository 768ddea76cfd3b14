"""docs/examples/segmentation.py, the backbone example, run as the docs show it (fewer steps)."""

import runpy

import pytest

from tests.helpers.cli import ROOT


@pytest.mark.slow
def test_the_segmentation_example_beats_predicting_the_majority_class_by_far():
    main = runpy.run_path(str(ROOT / "docs" / "examples" / "segmentation.py"))["main"]
    result = main(steps=150, seed=0)
    print(result)
    assert result["majority_baseline"] <= 0.25  # background everywhere: its IoU over 4 classes
    assert result["mean_iou"] >= 0.75 and result["mean_iou"] - result["majority_baseline"] >= 0.5
    assert min(result["per_class_iou"].values()) >= 0.6  # every shape is found, not only background
