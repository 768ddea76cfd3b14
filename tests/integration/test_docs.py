"""The README and the pages under docs/ against the code: every Python snippet runs, every command
line of this project's programs is parsed by that program's own parser, and every path of the
repository they name exists. A renamed flag, option, attribute or file fails here.

A Python snippet that needs the network, a GPU or a container is marked on the line before its
fence with `<!-- parsed, not run: <why> -->`; it is compiled and its imports are checked. Command
lines are never run, only parsed: `fit` would train, `export` would write files."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import jsonargparse
import pytest
import timm
import torch
import torchvision

from effnet_lightning.cli.app import main
from tests.helpers.networks import randomise_batchnorm
from tests.helpers.weights_cache import add_to_cache

ROOT = Path(__file__).resolve().parents[2]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


NOT_RUN = re.compile(r"<!-- parsed, not run: (.+) -->\s*$")


LAUNCHERS = {"srun", "sudo", "time"}  # words before a command that take no options of their own here


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    language: str
    text: str
    not_run: str | None  # why it is only parsed, from its marker

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """The fenced code blocks of a page."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        found.append(Snippet(page, line, match.group(1), match.group(2), marker.group(1) if marker else None))
    return found


def command_lines(page: Path) -> list[tuple[str, str]]:
    """(where, command) for each command line in a shell block, and each inline `python ...` of
    the prose that is not a synopsis; a line continued with a backslash is one command."""
    found = []
    for snippet in snippets(page):
        if snippet.language not in ("bash", "sh", "shell"):
            continue
        for i, line in enumerate(snippet.text.replace("\\\n", " ").splitlines()):
            found += [(f"{snippet}+{i + 1}", part) for part in re.split(r"\s*&&\s*", line) if part.strip()]
    prose = FENCE.sub("", page.read_text())
    for command in re.findall(r"`(python3? [^`]+)`", prose):
        if "..." not in command and " [" not in command and len(command.split()) > 2:  # not a synopsis
            found.append((f"{page.relative_to(ROOT)} (prose)", command))
    return found


def program_and_args(command: str) -> tuple[str, list[str]] | None:
    """The project's program a command line runs and its arguments: ("cli.py", [...]),
    ("benchmarks/x.py", [...]) or ("-m effnet_lightning.x", [...]); None for other programs."""
    words = shlex.split(command.split(" > ")[0].split(" | ")[0], comments=True)
    while words and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) or words[0] in LAUNCHERS):
        words = words[1:]
    if words[:1] == ["torchrun"]:  # its own options, then the script
        words = ["python", *words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]]
    if not words or words[0] not in ("python", "python3") or len(words) < 2:
        return None
    if words[1] == "-m":
        return (f"-m {words[2]}", words[3:]) if words[2].startswith("effnet_lightning") else None
    return words[1], words[2:]


class Parsed(BaseException):
    """Raised right after a parser accepted the arguments, so nothing runs."""


@pytest.fixture
def parse_only(monkeypatch):
    """Every argparse and jsonargparse parser stops the program once it has parsed."""
    plain, typed = argparse.ArgumentParser.parse_args, jsonargparse.ArgumentParser.parse_args

    def plain_then_stop(self, *args, **kwargs):
        result = plain(self, *args, **kwargs)
        if isinstance(self, jsonargparse.ArgumentParser):
            return result
        raise Parsed(result)

    def typed_then_stop(self, *args, **kwargs):
        raise Parsed(typed(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", plain_then_stop)
    monkeypatch.setattr(jsonargparse.ArgumentParser, "parse_args", typed_then_stop)


def parse(program: str, args: list[str], monkeypatch) -> None:
    """Hand `args` to the program's parser; fails with the parser's message unless it accepts them."""
    monkeypatch.setattr(sys, "argv", [program, *args])
    try:
        if program == "cli.py":
            main(args)
        elif program.startswith("-m "):
            importlib.import_module(program[3:]).main(args)
        else:
            runpy.run_path(str(ROOT / program), run_name="__main__")
    except Parsed:
        return
    except SystemExit as exit_info:
        if exit_info.code in (0, None) and "--help" in args:
            return
        raise AssertionError(f"exit status {exit_info.code}") from None
    raise AssertionError("the program ran to its end without parsing its arguments")


@pytest.fixture
def weights_caches(tmp_path, monkeypatch):
    """torchvision's B0 ImageNet file and timm's NoisyStudent B0 in offline caches, randomly
    initialised (what the snippets show is loading, not accuracy)."""
    torch.manual_seed(0)
    url = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.efficientnet_b0().state_dict(), cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "hf"
    add_to_cache(
        hub, "timm/tf_efficientnet_b0.ns_jft_in1k", randomise_batchnorm(timm.create_model("tf_efficientnet_b0"))
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


PYTHON = [s for page in PAGES for s in snippets(page) if s.language == "python"]


def test_every_command_line_in_the_docs_parses(parse_only, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # configs/... and benchmarks/... as a user types them
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    checked, failed = [], []
    for page in PAGES:
        for where, command in command_lines(page):
            found = program_and_args(command)
            if found is None:
                continue
            program, args = found
            try:
                parse(program, args, monkeypatch)
            except AssertionError as e:
                lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
                failed.append(f"{where}: {command}\n    {e}: {lines[-1] if lines else ''}")
            checked.append(program)
    capsys.readouterr()
    assert not failed, "command lines in the docs that their program does not accept:\n" + "\n".join(failed)
    assert checked.count("cli.py") >= 60 and len({p for p in checked if p.startswith("benchmarks/")}) >= 6


def test_every_repository_path_the_docs_name_exists():
    named = set()
    for page in PAGES:
        named |= set(
            re.findall(
                r"(?<![\w/.~-])((?:configs|benchmarks|effnet_lightning|tests|docs)/[\w./-]*\w)", page.read_text()
            )
        )
    missing = sorted(path for path in named if not (ROOT / path).exists() and "*" not in path)
    assert not missing, f"paths named in the docs that do not exist: {missing}"


@pytest.mark.parametrize("snippet", PYTHON, ids=str)
def test_python_snippet(snippet, weights_caches):
    tree = ast.parse(snippet.text, filename=str(snippet))
    for node in ast.walk(tree):  # names imported from the project exist, run or not
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("effnet_lightning"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{snippet}: {node.module} has no {alias.name}"
    if snippet.not_run is None:
        script = Path(f"snippet_{snippet.line}.py")  # in the test's working folder
        script.write_text(snippet.text)
        runpy.run_path(str(script), run_name="__main__")


def test_the_python_snippets_are_found():
    assert len(PYTHON) >= 2 and any(s.page.name == "README.md" for s in PYTHON)


def test_the_readme_stays_short_enough_to_read_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    long = [f"README.md:{i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) > 100]
    assert len(lines) <= 250 and not long, f"{len(lines)} lines (at most 250); lines over 100 characters: {long}"
