"""docs/faults.md lists every fault the tests inject and what was observed. Each fault test
checks that its row quotes what the test just saw, and `tests/integration/test_faults.py` checks that every row
belongs to a test, so the document cannot drift from the code."""

import re

from tests.helpers.cli import ROOT

DOC = ROOT / "docs" / "faults.md"
ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)$", re.MULTILINE)


def rows() -> dict[str, str]:
    """{fault id: the rest of its table row}."""
    return {match.group(1): match.group(2) for match in ROW.finditer(DOC.read_text())}


def expect(fault_id: str, *observed: str) -> None:
    """The row of `fault_id` quotes each observed text (in backticks)."""
    row = rows().get(fault_id)
    assert row is not None, f"{DOC} has no row for `{fault_id}`"
    for text in observed:
        assert f"`{text}`" in row, f"{DOC}, row `{fault_id}`, should quote what was observed: `{text}`\nrow: {row}"
