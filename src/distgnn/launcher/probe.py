"""Checks run on each host before a launch starts anything; prints one JSON line.

    python -m distgnn.launcher.probe --address A [--port P]... [--gpus] [--library SONAME]...

`busy`: ports that cannot be bound on A (in use); `error`: A is not an address of this
host; `gpus`: torch.cuda.device_count() when --gpus is given; `missing`: the --library
sonames the dynamic loader does not know (ldconfig's cache).
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys


def port_state(address: str, port: int) -> str:
    """'free', 'busy' or 'not-local' for a TCP port on one of this host's addresses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the real servers use: TIME_WAIT leftovers do not block them, listeners do.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "busy"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "not-local"
            raise
    return "free"


def missing_libraries(sonames: list[str]) -> list[str]:
    """Sonames absent from the loader cache. Not dlopen'ed: loading an allocator into a
    running process would mix two mallocs."""
    import shutil
    import subprocess

    if not sonames:
        return []
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        listing = ""
    known = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    return [name for name in sonames if name not in known]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distgnn.launcher.probe")
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, action="append", default=[])
    p.add_argument("--gpus", action="store_true")
    p.add_argument("--library", action="append", default=[])
    ns = p.parse_args(argv)
    report: dict = {"busy": [], "error": None, "gpus": None, "missing": missing_libraries(ns.library)}
    try:
        addr = socket.gethostbyname(ns.address)
    except OSError as exc:
        addr, report["error"] = ns.address, f"cannot resolve {ns.address}: {exc}"
    for port in ns.port if report["error"] is None else []:
        state = port_state(addr, port)
        if state == "not-local":
            report["error"] = f"{ns.address} is not an address of this host"
            break
        if state == "busy":
            report["busy"].append(port)
    if ns.gpus:
        report["gpus"] = gpu_count()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
