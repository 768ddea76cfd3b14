"""The package as pip installs it: its declared dependencies and its console command."""

import os
import re
import subprocess
import sys
import sysconfig

import pytest
import tomllib
from cli_helpers import ROOT


def _name(requirement: str) -> str:
    """The normalised project name of a requirement line (`Foo_bar[x]==1` -> `foo-bar`)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group()).lower()


def test_pyproject_declares_the_packages_requirements_txt_pins():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert all("==" in line for line in pinned), "requirements.txt pins every package"
    assert sorted(map(_name, declared)) == sorted(map(_name, pinned))


@pytest.mark.slow
def test_pip_install_gives_the_effnet_lightning_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # The dependencies installed here, seen from the new environment, so nothing is downloaded.
    site = subprocess.run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (tmp_path / "venv" / site).mkdir(parents=True, exist_ok=True)
    (venv / site / "installed-here.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [bin_dir / "python", "-m", "pip", "install", "-q", "--no-build-isolation", "--no-index", ROOT]
    subprocess.run(install, check=True, cwd=tmp_path)
    out = subprocess.run(
        [bin_dir / "effnet-lightning", "--help"], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "{fit,validate,test,predict,export}" in out.stdout
    fit = subprocess.run(
        [bin_dir / "effnet-lightning", "fit", "--help"], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    assert fit.returncode == 0 and "--model.variant" in fit.stdout
    # the installed package, not this checkout, answered
    where = subprocess.run(
        [bin_dir / "python", "-c", "import effnet_lightning; print(effnet_lightning.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv)), where
