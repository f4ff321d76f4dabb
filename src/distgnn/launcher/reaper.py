"""Stop this host's process groups when the launcher dies, however it dies.

    python -m distgnn.launcher.reaper [--grace S]

The launcher starts one reaper (in a session of its own, so a signal to the launcher's
process group does not reach it) and writes `+PGID` to its stdin for every process group
it starts on this host, `-PGID` once it has swept one. The launcher never closes that
pipe itself: the kernel closes it when the launcher exits, and only then does the reaper
act. A normal end leaves nothing to do; after a `kill -9` of the launcher every group
still listed gets SIGTERM, SIGKILL after the grace period. Remote processes need no
reaper: their ssh connections close and remote_exec stops them.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(groups: set[int], sig: int) -> None:
    from distgnn.launcher.runner import killpg

    for pgid in groups:
        killpg(pgid, sig)


def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM every group, SIGKILL the ones still there after `grace` seconds."""
    _signal(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.05)
    _signal({g for g in groups if _alive(g)}, signal.SIGKILL)


def read_groups(stream) -> set[int]:
    """Apply +PGID / -PGID lines until EOF; returns the groups still listed."""
    groups: set[int] = set()
    for line in stream:
        line = line.strip()
        if line[:1] == "+" and line[1:].isdigit():
            groups.add(int(line[1:]))
        elif line[:1] == "-" and line[1:].isdigit():
            groups.discard(int(line[1:]))
    return groups


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    grace = float(argv[argv.index("--grace") + 1]) if "--grace" in argv else 5.0
    # Terminal signals are for the launcher; the reaper must outlive it.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    groups = read_groups(sys.stdin)
    if groups:
        stop_groups(groups, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
