"""Shared helpers for tests that run real clusters: free ports, bounded launches, leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PY = sys.executable
LAUNCH = [PY, "-m", "distgnn.launcher.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launch(argv: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - start


def only_run(workspace: Path) -> Path:
    (run,) = (workspace / "runs").iterdir()
    return run


def leftovers(run: Path) -> list[str]:
    """Processes of the run still alive: every argv of a run names its run folder (--ip-config)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(str(run) in part for part in cmdline) and proc.info["pid"] != os.getpid():
            found.append(f"{proc.info['pid']}: {' '.join(cmdline)[:200]}")
    return found


def wait_gone(run: Path, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_fault(fault: str, how: str, stopped_in: float, cause: str, left: list[str]) -> None:
    """One row of the fault matrix (docs/faults.md is written from these lines: run the
    fault tests with `pytest -s` and collect the lines starting FAULT-MATRIX)."""
    print("FAULT-MATRIX " + json.dumps({"fault": fault, "how": how, "stopped_in_s": round(stopped_in, 1),
                                        "root_cause": cause, "left": left}))


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A real file system of `size` (tmpfs, e.g. "2m") mounted at a new `folder`: a disk
    that fills up. Mounting needs root, which CI has."""
    if os.geteuid() != 0:
        raise AssertionError("this test mounts a tmpfs and needs root; CI runs as root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
