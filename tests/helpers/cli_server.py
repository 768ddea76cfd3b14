"""Runs `cli.py` commands for the tests, each in a process of its own, without importing the
CLI's libraries anew for every command: this process imports them once, then forks a child per
command read from stdin (one JSON object per line: args, cwd, env, stdout, stderr paths). The
child starts a session of its own (its loader workers and DDP processes in its group), takes
the command's working folder, environment and output files, and runs `cli.py` as `python cli.py`
would; it exits as that process would, atexit handlers and all. This process answers each
command with two lines: the child's pid when it starts, its exit status when it ends.
"""

import glob
import importlib
import io
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path

importlib.import_module("effnet_lightning.cli.app")  # what every command imports: torch, Lightning, ...

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "cli.py")


def reply(value) -> None:
    sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


def group_running(group: int) -> bool:
    """Whether a process of this process group still runs (zombies aside)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while listed
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def wait_for_group(group: int) -> None:
    """Until every process the command started has ended (DDP processes, loader workers), as a
    subprocess's output is complete only when every process holding it open has ended."""
    while group_running(group):
        time.sleep(0.05)


def serve() -> dict | None:
    """Fork a child per command; return the command in the child, None here at end of input."""
    # A fork copies only the calling thread: a lock another thread held would stay locked.
    assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
    reply("ready")
    for line in sys.stdin:
        command = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return command
        reply(pid)
        _, status = os.waitpid(pid, 0)
        wait_for_group(pid)
        reply(os.waitstatus_to_exitcode(status))
    return None


def become(command: dict) -> None:
    """Turn this child into `python cli.py ARGS` run in the command's folder and environment."""
    os.setsid()
    files = ((0, os.devnull, os.O_RDONLY), (1, command["stdout"], os.O_WRONLY), (2, command["stderr"], os.O_WRONLY))
    for fd, path, mode in files:
        target = os.open(path, mode | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = io.StringIO()  # empty, as /dev/null: the inherited one holds lines read ahead from the pipe
    os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    sys.argv = [CLI, *command["args"]]
    sys.path[0] = os.path.dirname(CLI)  # as `python cli.py` puts the script's folder first


command = serve()
if command is not None:
    become(command)
    runpy.run_path(CLI, run_name="__main__")
