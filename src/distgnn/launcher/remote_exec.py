"""Run one command so that it stops when whoever started it goes away.

    python -m distgnn.launcher.remote_exec [--grace S] [--env NAME=VALUE]... -- ARGV...

The launcher starts every remote process through this wrapper over ssh, with a pipe on
ssh's stdin. A closed ssh connection does not kill remote processes by itself, but it
does close this wrapper's stdin: on EOF (or SIGHUP/SIGTERM/SIGINT) the wrapper sends
SIGTERM to the command's whole process group, SIGKILL after the grace period, and exits.
After the command ends, leftover members of its group (e.g. orphaned sampler processes)
are killed too. The exit status is the command's, or 128+N when signal N ended it.

If the wrapper itself is killed (SIGKILL included), the kernel sends the command SIGTERM
(PR_SET_PDEATHSIG): left running, it would keep the ssh session open through its
inherited stdout, and the launcher could neither see nor stop it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def parse(argv: list[str]) -> tuple[float, dict[str, str], list[str]]:
    if "--" not in argv:
        raise SystemExit("remote_exec: usage: [--grace S] [--env NAME=VALUE]... -- ARGV...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    grace, env = 5.0, {}
    it = iter(options)
    for opt in it:
        value = next(it, None)
        if value is None:
            raise SystemExit(f"remote_exec: {opt} needs a value")
        if opt == "--grace":
            grace = float(value)
        elif opt == "--env":
            name, _, val = value.partition("=")
            env[name] = val
        else:
            raise SystemExit(f"remote_exec: unknown option {opt}")
    if not command:
        raise SystemExit("remote_exec: no command after --")
    return grace, env, command


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _term_with_parent(parent: int):
    """preexec_fn: SIGTERM to the command when this wrapper ends (runs before any thread)."""
    def arm() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the wrapper died before the request took effect
            os._exit(1)
    return arm


def _watch_stdin(stop: threading.Event) -> None:
    # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader's lock
    # aborts the interpreter at exit.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    grace, env, command = parse(sys.argv[1:] if argv is None else argv)
    stop = threading.Event()
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        child = subprocess.Popen(command, env={**os.environ, **env}, stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_term_with_parent(os.getpid()))
    except OSError as exc:
        print(f"remote_exec: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    while child.poll() is None:
        if stop.wait(0.1):
            _kill_group(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(child.pid, signal.SIGKILL)
                child.wait()
    _kill_group(child.pid, signal.SIGKILL)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main())
