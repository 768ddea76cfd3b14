"""The variant-table command: measured parameters and GMACs."""

import subprocess
import sys

import pytest

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
    assert (
        rows["b0"][3] == "224"
        and rows["b0"][6] == "5,288,548"
        and float(rows["b0"][7]) == pytest.approx(0.386, abs=1e-3)
    )
    assert rows["b7"][6] == "66,347,960" and float(rows["b7"][7]) == pytest.approx(37.746, rel=0.01)
    assert rows["lite0"][6] == "4,652,008"
    assert float(rows["phi1"][7]) / float(rows["b0"][7]) == pytest.approx(2.0, rel=0.15)
