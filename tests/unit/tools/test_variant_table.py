"""The variant-table command: measured parameters and GMACs."""

import subprocess
import sys

import pytest
import torchvision

from effnet_lightning.models.scaling import (
    VARIANTS,
)


@pytest.mark.slow
def test_scaling_command_prints_measured_params_and_gmacs():
    out = subprocess.run(
        [sys.executable, "-m", "effnet_lightning.tools.variant_table", "--phi", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == set(VARIANTS) | {"phi1"}
    assert rows["b0"][3:5] == ["224", "224"] and rows["b0"][7] == "5,288,548"
    assert float(rows["b0"][8]) == pytest.approx(0.386, abs=1e-3)
    assert rows["b7"][7] == "66,347,960" and float(rows["b7"][8]) == pytest.approx(37.746, rel=0.01)
    assert rows["lite0"][7] == "4,652,008"
    assert float(rows["phi1"][8]) / float(rows["b0"][8]) == pytest.approx(2.0, rel=0.15)
    # EfficientNetV2 against torchvision's own figures for its weights: parameters exactly, GMACs
    for size in ("S", "M", "L"):
        meta = torchvision.models.get_weight(f"EfficientNet_V2_{size}_Weights.IMAGENET1K_V1").meta
        row = rows[f"v2-{size.lower()}"]
        assert int(row[7].replace(",", "")) == meta["num_params"] and float(row[8]) == pytest.approx(
            meta["_ops"], rel=1e-3
        )
    assert rows["v2-s"][3:5] == ["300", "384"] and rows["v2-b0"][3:5] == ["192", "224"]
    # the official code's published FLOPs of the scaled base rows, at the evaluation size
    for name, gmacs in {"v2-b0": 0.72, "v2-b1": 1.2, "v2-b2": 1.7, "v2-b3": 3.0}.items():
        assert float(rows[name][8]) == pytest.approx(gmacs, rel=0.02), name
