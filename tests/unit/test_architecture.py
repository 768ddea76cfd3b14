"""The import rules docs/architecture.md states: each package folder of effnet_lightning imports
only the ones listed here, so imports go one way."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "effnet_lightning"

# What each top-level module or package folder may import of the project (docs/architecture.md).
ALLOWED = {
    "compat": set(),
    "contracts": set(),
    "stop_signals": set(),
    "console": set(),
    "models": {"compat"},
    "data": {"models", "compat", "contracts", "stop_signals"},
    "training": {"models", "compat", "contracts"},
    "tools": {"data", "models", "stop_signals"},
    "callbacks": {"data", "training", "compat", "contracts", "console", "stop_signals"},
    "export": {"models"},
    "serving": {"data", "export", "models", "console"},
    "cli": {
        "callbacks",
        "console",
        "data",
        "export",
        "models",
        "serving",
        "tools",
        "training",
        "compat",
        "contracts",
        "stop_signals",
    },
}


def project_imports(path: Path) -> set[str]:
    """The top-level project modules a file imports (effnet_lightning.<name>...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        names |= {m.split(".")[1] for m in modules if m.startswith("effnet_lightning.")}
    return names


def test_every_package_folder_imports_only_what_the_architecture_allows():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part in ("__init__", "__main__"):
            continue
        assert part in ALLOWED, f"{part} is not in docs/architecture.md's import rules"
        found.setdefault(part, set()).update(project_imports(path) - {part})
    wrong = {part: sorted(names - ALLOWED[part]) for part, names in found.items() if names - ALLOWED[part]}
    assert not wrong, f"imports the architecture does not allow: {wrong}"
