"""The package as pip installs it: its declared dependencies and its console command."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


# Run outputs at the top of a checkout (effnet_lightning/data is a package, not these).
RUN_OUTPUTS = {".git", "data", "runs", "wandb", "build", ".ruff_cache", ".pytest_cache"}


def _not_sources(directory: str, names: list[str]) -> list[str]:
    top = Path(directory) == ROOT
    return [n for n in names if (top and n in RUN_OUTPUTS) or n == "__pycache__" or n.endswith(".egg-info")]


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
    # No pip of its own: this environment's pip installs into it, and the packages installed
    # here are visible to it (a .pth file), so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "installed-here.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=_not_sources)
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, source], check=True, cwd=tmp_path)
    command = bin_dir / "effnet-lightning"
    out = subprocess.run([command, "--help"], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "{fit,validate,test,predict,export,serve}" in out.stdout
    fit = subprocess.run([command, "fit", "--help"], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert fit.returncode == 0 and "--model.variant" in fit.stdout
    # the installed package answered, not this checkout
    where = subprocess.run(
        [python, "-c", "import effnet_lightning; print(effnet_lightning.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(site), where
    # the serving page is package data: installed with the code
    page = [python, "-c", "from effnet_lightning.serving.server import page; print(page().count('<script>'))"]
    assert subprocess.run(page, check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip() == "1"
