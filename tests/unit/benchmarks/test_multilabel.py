"""benchmarks/multilabel.py without its fits: the sets it writes, the prior baseline, and its
summary and checks."""

import importlib.util
import math

import torch

from effnet_lightning.data.label_files import read_label_file
from effnet_lightning.training.multilabel import macro_average_precision
from tests.helpers.cli import ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("multilabel_benchmark", ROOT / "benchmarks" / "multilabel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_set_has_its_classes_one_to_three_labels_an_image_and_the_prior_baselines_map(tmp_path, monkeypatch):
    bench = _benchmark()
    monkeypatch.setattr(bench, "IMAGES", {"train": 40, "val": 30})
    label_file = bench.build("digits-ml", tmp_path)
    table = read_label_file(label_file)
    assert table.class_names == [str(d) for d in range(10)] and table.bad_rows == [] and table.multilabel
    assert {len(image.labels) for image in table.images.values()} == {1, 2, 3}
    val = [image for image in table.images.values() if image.split == "val"]
    targets = torch.tensor([[float(c in image.labels) for c in table.class_names] for image in val])
    constant = targets.new_ones(targets.shape) * torch.linspace(0.1, 0.9, 10)  # one score per class, for all images
    assert math.isclose(bench.prior_map(label_file), macro_average_precision(constant, targets), rel_tol=1e-6)


def test_the_photographs_val_tiles_touch_no_train_tile_and_sit_one_in_each_row_and_column():
    bench = _benchmark()
    boxes = bench.tiles(512, 384)
    assert len(boxes["val"]) == 3 and len(boxes["train"]) == 6
    for left, top, right, bottom in boxes["val"]:
        for other in boxes["train"]:
            overlap = min(right, other[2]) - max(left, other[0]), min(bottom, other[3]) - max(top, other[1])
            assert min(overlap) <= 0  # no pixel in both
    assert sorted(box[0] for box in boxes["val"]) == [0, 170, 340]  # one in each column
    assert sorted(box[1] for box in boxes["val"]) == [0, 128, 256]  # and in each row
    assert sum((r - l) * (b - t) for split in boxes.values() for l, t, r, b in split) == 510 * 384


def test_the_summary_holds_the_default_loss_to_the_seed_spread_and_lite0_to_0_9():
    bench = _benchmark()
    results = {
        "digits-ml": {
            "prior_map": 0.2,
            "runs": {
                "lite0 fine-tuned": {
                    "bce": {"1": 0.95, "2": 0.93, "3": 0.94},
                    "asl": {"1": 0.96, "2": 0.955, "3": 0.95},
                },
                "b0 from scratch": {"bce": {"1": 0.70, "2": 0.72, "3": 0.71}, "asl": {"1": 0.80, "2": 0.79, "3": 0.81}},
            },
        }
    }
    summary = bench.summarise(results)
    lite0 = summary["sets"]["digits-ml"]["inits"]["lite0 fine-tuned"]
    b0 = summary["sets"]["digits-ml"]["inits"]["b0 from scratch"]
    assert math.isclose(lite0["spread"], 0.02) and lite0["default_holds"]  # 0.94 >= 0.955 - 0.02
    assert not b0["default_holds"] and summary["checks"]["lite0_reaches_0.9"]
    text = bench.table(summary)
    assert "| digits-ml | 0.200 | lite0 fine-tuned | 0.940 (0.930) | 0.955 (0.950) | 0.020 | within the spread" in text
    assert "**below the better**" in text
