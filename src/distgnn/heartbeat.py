"""Liveness and progress of a server or trainer, as lines the launcher already reads.

A process started by `launch` gets DISTGNN_HEARTBEAT_S in its environment and prints

    distgnn-heartbeat: role=trainer rank=3 pid=4711 progress=1234

on stderr every that many seconds from a daemon thread: `progress` counts the batches it has
trained or evaluated (tick()). The supervisor keeps the last heartbeat of every
process (and of every rank of a torchrun group) and ends the job when one is silent,
or a trainer's progress stands still, for longer than --hang-timeout: a stopped
(SIGSTOP) or wedged process then has a root cause instead of a silent hang.
Started by hand (no variable), a process prints nothing.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass

ENV = "DISTGNN_HEARTBEAT_S"
PREFIX = "distgnn-heartbeat: "
_LINE = re.compile(r"distgnn-heartbeat: role=(\w+) rank=(\d+) pid=(\d+) progress=(\d+)")

_progress = 0
_lock = threading.Lock()


def tick(n: int = 1) -> None:
    """Count `n` batches of progress (training steps, evaluation or prediction batches)."""
    global _progress
    with _lock:
        _progress += n


def format_heartbeat(role: str, rank: int, progress: int, pid: int | None = None) -> str:
    return f"{PREFIX}role={role} rank={rank} pid={os.getpid() if pid is None else pid} progress={progress}"


@dataclass(frozen=True)
class Heartbeat:
    role: str
    rank: int
    pid: int
    """The process's pid: torchrun starts each worker in a session of its own, out of
    reach of the group signals that stop torchrun, so the launcher stops a hung worker
    by pid (on this host)."""
    progress: int


def split_heartbeat(line: str) -> tuple[Heartbeat | None, str]:
    """(the heartbeat in a line, the line without it). Searched anywhere in the line: a
    worker's block-buffered stdout can end mid-line where the heartbeat (stderr) lands."""
    match = _LINE.search(line)
    if match is None:
        return None, line
    beat = Heartbeat(match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4)))
    return beat, line[:match.start()] + line[match.end():]


def start(role: str, rank: int, stream=None) -> threading.Thread | None:
    """Begin the heartbeat when the launcher asked for one (ENV set); None otherwise."""
    interval = os.environ.get(ENV)
    if not interval:
        return None
    seconds = max(0.1, float(interval))
    out = stream or sys.stderr  # line-buffered: each heartbeat is one write

    def beat() -> None:
        import time

        from distgnn.runlog import write_line

        while True:
            try:
                write_line(out, format_heartbeat(role, rank, _progress))
            except (OSError, ValueError):
                return  # stderr is gone: nobody is listening
            time.sleep(seconds)

    thread = threading.Thread(target=beat, name="distgnn-heartbeat", daemon=True)
    thread.start()
    return thread
