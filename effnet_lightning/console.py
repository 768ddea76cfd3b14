"""What the command line prints: one-line results on stdout, the project's log on stderr, from
process 0 only."""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.utilities import rank_zero_only


@rank_zero_only
def say(line: str, err: bool = False) -> None:
    """A result line on stdout, or a notice on stderr (process 0)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


class CurrentStderr(logging.StreamHandler):
    """A handler that writes to `sys.stderr` as it is when a record comes, not as it was when the
    handler was made: `main` run twice in one process with stderr redirected in between (as
    in-process tests do) logs to the second stream, not to the closed first one."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_to_stderr() -> None:
    """The project's log messages (data found, files skipped, weights loaded) on stderr, from
    process 0 only."""
    logger = logging.getLogger("effnet_lightning")
    if logger.handlers:
        return
    handler = CurrentStderr()
    handler.addFilter(lambda record: getattr(rank_zero_only, "rank", 0) == 0)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def one_line(error: BaseException) -> str:
    """The message of an error; for one re-raised from a data-loading worker, the original
    message rather than the worker's traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Original Traceback" in lines[0] and len(lines) > 1:
        last = lines[-1]
        name, _, message = last.partition(": ")
        return message if message and name.replace(".", "").isidentifier() else last
    return " ".join(line.strip() for line in lines)


def format_duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"
