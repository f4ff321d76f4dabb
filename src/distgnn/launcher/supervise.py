"""Watch a run's processes: stream their output, stop everything on the first failure.

Every output line goes to our stdout with a `[host role rank]` prefix and, unprefixed, to
the process's log file. Success is every trainer group exiting 0; graph servers then get
a short time to exit on their own (DGL servers leave when their clients disconnect)
before they are stopped. The first non-zero exit, or a stop request (Ctrl-C, SIGTERM),
stops every process on every host: SIGTERM to the process groups, SIGKILL after a grace
period.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import TextIO

from distgnn.launcher.monitor import NULL_MONITOR, NullMonitor, RunMonitor
from distgnn.launcher.plan import ProcessSpec
from distgnn.launcher.runner import Running, killpg
from distgnn.heartbeat import split_heartbeat
from distgnn.metrics import parse_announcement

TAIL_LINES = 20
"""Log lines shown in a root-cause report."""
TAIL_KEPT = 400
"""Log lines kept per process: enough to find a trainer's traceback above torchrun's report."""
_TORCHRUN_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_TORCHRUN_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass(frozen=True, kw_only=True)
class ProcessFailure:
    """One process that ended badly on its own (not stopped by the launcher)."""

    host: str
    host_index: int
    role: str
    rank: int
    exit_code: int | None
    """Exit status; None when a signal ended it."""
    signal: str | None
    """Name of the signal that ended it (local processes), else None."""
    time: float
    """When the launcher saw it end (Unix time)."""
    log_path: str
    log_tail: list[str]
    """Last lines of its output."""
    worker: str | None = None
    """For a trainer group: torchrun's own root cause (global rank and its exit code), when it printed one."""
    error: str | None = None
    """The first one-line error a distgnn command printed (`train: error: ...`), if any: in a
    trainer group's shared log it can sit far above the tail, under other workers' tracebacks."""
    lost_peer: bool = False
    """Its output says a collective peer went away (Gloo/NCCL connection reset or closed): a
    consequence of another process's failure, never the root cause while there is another."""
    hang: str | None = None
    """Why the launcher judged it hung (silent or without progress past --hang-timeout)."""

    def describe(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exit code {self.exit_code}"
        if self.hang is not None:
            how = f"stopped making progress: {self.hang}"
        if self.exit_code == 255 and self.signal is None:
            how += " (255: ssh lost the connection, or the command's own status)"
        clock = time.strftime("%H:%M:%S", time.localtime(self.time))
        worker = f" ({self.worker})" if self.worker else ""
        peer = ", after losing a peer" if self.lost_peer else ""
        return f"host {self.host} {self.role} rank {self.rank}: {how}{worker}{peer} at {clock}"


@dataclass(kw_only=True)
class RunResult:
    """How a run ended. failures[0] is the root cause: the earliest failure that did not merely
    lose a collective peer (a killed trainer's peers often die of that before the launcher has
    seen the kill), else the earliest."""

    status: str
    """'succeeded', 'failed' or 'interrupted'."""
    failures: list[ProcessFailure] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    """Every process's exit status by `host role rank` (negative: local signal; None: did not end)."""
    stop_reason: str | None = None
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped an interrupted run."""
    started: float = 0.0
    ended: float = 0.0

    @property
    def root_cause(self) -> ProcessFailure | None:
        return self.failures[0] if self.failures else None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Watched:
    proc: Running
    tail: deque
    reader: threading.Thread
    exit_code: int | None = None
    ended_at: float | None = None
    told: bool = False
    """Its end was passed to the monitor."""
    beats: dict = field(default_factory=dict)
    """rank -> [last heartbeat (monotonic), progress, when progress last changed]."""
    pids: set = field(default_factory=set)
    """Pids its heartbeats named (local processes only)."""
    hang: str | None = None


class Supervisor:
    """Owns the started processes of one run until they have all ended."""

    def __init__(
        self,
        out: TextIO,
        *,
        stop_grace_s: float,
        server_linger_s: float,
        poll_s: float = 0.1,
        settle_s: float = 3.0,
        peer_settle_s: float = 10.0,
        hang_timeout_s: float = 0.0,
        monitor: RunMonitor | NullMonitor = NULL_MONITOR,
    ) -> None:
        self._out = out
        self._monitor = monitor
        self._lock = threading.Lock()
        self._watched: list[_Watched] = []
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self.stop_signal: int | None = None
        self.stop_grace_s = stop_grace_s
        self.server_linger_s = server_linger_s
        self.poll_s = poll_s
        # After the first failure, how long other processes may still fail on their own before
        # the teardown: a SIGKILLed trainer's torchrun reports it a second or two after its
        # peers have already died of the lost connection, and the kill is the root cause.
        self.settle_s = settle_s
        self.peer_settle_s = peer_settle_s
        self.hang_timeout_s = hang_timeout_s
        """0: no liveness watch."""
        self.started = time.time()

    def add(self, proc: Running) -> None:
        """Start streaming a freshly started process's output."""
        spec = proc.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: deque = deque(maxlen=TAIL_KEPT)
        reader = threading.Thread(target=self._pump, args=(proc, tail), daemon=True, name=f"log {spec.label}")
        self._watched.append(_Watched(proc, tail, reader))
        self._monitor.started(spec)
        reader.start()

    def request_stop(self, reason: str, signum: int | None = None) -> None:
        """Ask the run to stop (safe from a signal handler)."""
        if not self._stop.is_set():
            self._stop_reason, self.stop_signal = reason, signum
        self._stop.set()

    def _pump(self, proc: Running, tail: deque) -> None:
        prefix = f"[{proc.spec.label}] "
        with open(proc.spec.log_path, "a", encoding="utf-8") as log:
            for raw in iter(proc.popen.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                beat, line = split_heartbeat(line)
                if beat is not None:
                    self._heard(proc, beat)
                    if not line.strip():
                        continue  # a heartbeat alone: not worth a log line
                tail.append(line)
                # Into the log before the monitor lists the endpoint: whoever reads the
                # targets file may look for the announcement in the log (a test did, and
                # once found the target listed but the line not yet written).
                log.write(line + "\n")
                log.flush()
                if (note := parse_announcement(line)) is not None:
                    self._monitor.announced(proc.spec, note)
                with self._lock:
                    try:
                        self._out.write(prefix + line + "\n")
                        self._out.flush()
                    except (OSError, ValueError):
                        pass  # our stdout went away (`launch | head`); keep draining into the log

    def _heard(self, proc: Running, beat) -> None:
        watched = next((w for w in self._watched if w.proc is proc), None)
        if watched is None:
            return
        now = time.monotonic()
        last = watched.beats.get(beat.rank)
        moved = last is None or beat.progress != last[1]
        watched.beats[beat.rank] = [now, beat.progress, now if moved else last[2]]
        if last is None and proc.spec.local and beat.pid not in watched.pids:
            watched.pids.add(beat.pid)
            reaper = getattr(proc, "reaper", None)
            if reaper is not None and _leads_own_group(beat.pid):
                reaper.watch(beat.pid)  # a torchrun worker's own session: the reaper stops it too

    def _hung(self) -> list[_Watched]:
        """Live processes silent, or trainers without progress, for longer than the timeout."""
        if self.hang_timeout_s <= 0:
            return []
        now, limit, found = time.monotonic(), self.hang_timeout_s, []
        for w in self._watched:
            if w.ended_at is not None or w.hang is not None:
                continue
            for rank, (seen, progress, moved) in sorted(w.beats.items()):
                who = f"global rank {rank}" if w.proc.spec.role == "trainer" else ""
                if now - seen > limit:
                    w.hang = f"{who + ': ' if who else ''}no heartbeat for {now - seen:.0f} s (--hang-timeout {limit:g})"
                elif w.proc.spec.role == "trainer" and progress > 0 and now - moved > limit:
                    w.hang = (f"{who}: no training or evaluation batch for {now - moved:.0f} s "
                              f"(--hang-timeout {limit:g})")
                if w.hang is not None:
                    found.append(w)
                    break
        return found

    def _poll(self) -> list[_Watched]:
        """Record newly ended processes; return them."""
        ended = []
        for w in self._watched:
            if w.ended_at is None and w.proc.popen.poll() is not None:
                w.exit_code, w.ended_at = w.proc.popen.returncode, time.time()
                ended.append(w)
        return ended

    def run(self) -> RunResult:
        """Supervise until the run ends; every process is stopped and reaped on return."""
        failed: list[_Watched] = []
        status = self._watch_until_end(failed)
        self._teardown()
        for w in self._watched:
            # Stopped by us: done, if the run as a whole succeeded.
            self._tell_end(w, succeeded=status == "succeeded" or w.exit_code == 0, failure=False)
        for w in self._watched:
            w.reader.join(timeout=2.0)
        return RunResult(
            status=status,
            failures=sorted((self._failure(w) for w in failed), key=_cause_order),
            exit_codes={w.proc.spec.label: w.exit_code for w in self._watched},
            stop_reason=self._stop_reason,
            stop_signal=self.stop_signal if status == "interrupted" else None,
            started=self.started,
            ended=time.time(),
        )

    def _watch_until_end(self, failed: list[_Watched]) -> str:
        trainers = [w for w in self._watched if w.proc.spec.role == "trainer"]
        linger_until: float | None = None
        settle_until: float | None = None
        first_failure = 0.0
        while True:
            for w in self._poll():
                failure = w.exit_code != 0 and not self._stop.is_set()
                self._tell_end(w, succeeded=w.exit_code == 0, failure=failure)
                if failure:
                    failed.append(w)
            if not self._stop.is_set():
                for w in self._hung():
                    w.ended_at = time.time()  # the moment it was judged hung; teardown stops it
                    self._tell_end(w, succeeded=False, failure=True)
                    failed.append(w)
            if failed and settle_until is None:
                first_failure = time.monotonic()
                settle_until = first_failure + self.settle_s
            if failed and settle_until is not None and all(self._failure(w).lost_peer for w in failed):
                # Only peers of the real failure have ended so far (a killed rank 0's torchrun
                # can report it after the other host's trainers lost the connection): wait for
                # the cause a while longer, so that it is the one reported.
                settle_until = max(settle_until, first_failure + self.peer_settle_s)
            if failed and (time.monotonic() >= settle_until or all(w.ended_at is not None for w in self._watched)):
                self._stop_reason = self._stop_reason or f"{failed[0].proc.spec.label} failed"
                return "failed"
            if self._stop.is_set():
                return "interrupted"
            if failed:  # settling: a failed run never turns into a success below
                self._stop.wait(self.poll_s)
                continue
            if linger_until is None and all(w.ended_at is not None for w in trainers):
                linger_until = time.monotonic() + self.server_linger_s
            if linger_until is not None and (
                time.monotonic() >= linger_until or all(w.ended_at is not None for w in self._watched)
            ):
                return "succeeded"
            self._stop.wait(self.poll_s)

    def _tell_end(self, w: _Watched, *, succeeded: bool, failure: bool) -> None:
        if not w.told:
            w.told = True
            self._monitor.ended(w.proc.spec, succeeded=succeeded, failure=failure)

    def _teardown(self) -> None:
        """SIGTERM every live process group, SIGKILL what is left after the grace period."""
        live = [w for w in self._watched if w.proc.popen.poll() is None]
        for w in live:
            w.proc.terminate()
            for pid in w.pids:  # a stopped (SIGSTOP) worker must run to act on torchrun's SIGTERM
                _signal_pid(pid, signal.SIGCONT)
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline and any(w.proc.popen.poll() is None for w in live):
            time.sleep(0.05)
        for w in live:
            if w.proc.popen.poll() is None:
                w.proc.kill()
        for w in self._watched:
            _kill_own_sessions(w)
        for w in self._watched:
            try:
                w.proc.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass  # unkillable (e.g. stuck in the kernel): reported as not ended
            w.proc.sweep()
            if w.ended_at is None and w.proc.popen.returncode is not None:
                w.exit_code, w.ended_at = w.proc.popen.returncode, time.time()
            elif w.hang is not None:
                w.exit_code = w.proc.popen.returncode  # stopped by us after it was judged hung

    def _failure(self, w: _Watched) -> ProcessFailure:
        failure = failure_of(w.proc.spec, w.exit_code, list(w.tail), w.ended_at or time.time())
        if w.hang is not None:
            failure = replace(failure, hang=w.hang, exit_code=None, signal=None, lost_peer=False)
        return failure


def _leads_own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _kill_own_sessions(w: "_Watched") -> None:
    """SIGKILL the process groups of workers that torchrun started in sessions of their
    own, once their group leader is known to be one of ours (it may be gone, its pid reused)."""
    job = _job_id(w.proc.spec.argv)
    reaper = getattr(w.proc, "reaper", None)
    for pid in w.pids:
        if _leads_own_group(pid) and _job_id(_cmdline(pid)) == job:
            killpg(pid, signal.SIGKILL)
        if reaper is not None:
            reaper.forget(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _job_id(argv: list[str]) -> str | None:
    """The --job-id a launched command carries (every server and trainer argv has one)."""
    return argv[argv.index("--job-id") + 1] if "--job-id" in argv[:-1] else None


def _cause_order(f: ProcessFailure) -> tuple:
    """Root cause first: not a lost peer; a silent process before one whose batches stopped
    (its peers wait on it in a collective, their heartbeats go on); then the earliest."""
    stalled = f.hang is not None and "no heartbeat" not in f.hang
    return (f.lost_peer, stalled, f.time)


def failure_of(spec: ProcessSpec, exit_code: int | None, lines: list[str], ended_at: float) -> ProcessFailure:
    """What a process's exit status (negative: the signal) and its last output lines say of its end."""
    code, sig = exit_code, None
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        code = None
    trainer = spec.role == "trainer"
    own = before_torchrun_report(lines) if trainer else lines
    error = first_error_line(lines)
    return ProcessFailure(
        host=spec.host,
        host_index=spec.host_index,
        role=spec.role,
        rank=spec.rank,
        exit_code=code,
        signal=sig,
        time=ended_at,
        log_path=str(spec.log_path),
        log_tail=own[-TAIL_LINES:],
        worker=torchrun_root_cause(lines, error_rank(error)) if trainer else None,
        error=error,
        # A process that explained its own failure did not merely lose a peer, even when a
        # worker beside it in the same torchrun group then did.
        lost_peer=error is None and not killed_by_signal(code, lines) and lost_a_peer(own),
    )


_PEER_LOSS = re.compile(
    r"Connection (reset|closed) by peer|Broken pipe|gloo/transport/.*(Read|Write) error"
    r"|NCCL.*(remote process exited|unhandled system error)|ProcessGroupNCCL.*Watchdog caught collective"
)


def killed_by_signal(exit_code: int | None, lines: list[str]) -> bool:
    """Ended by a signal, itself or (for a torchrun group) its first failed worker: a cause,
    even when the group's other workers then report the lost connection."""
    worker = _torchrun_failed_worker(lines)
    return exit_code is None or (worker is not None and worker[1] < 0)


_ERROR_LINE = re.compile(r"^(train|distgnn-server): error: ")


def first_error_line(lines: list[str]) -> str | None:
    """The first `<command>: error: <message>` line of a process's output."""
    return next((line for line in lines if _ERROR_LINE.match(line)), None)


def lost_a_peer(lines: list[str]) -> bool:
    """Whether a process's own output shows it failed because a collective peer vanished."""
    return any(_PEER_LOSS.search(line) for line in lines)


def before_torchrun_report(lines: list[str]) -> list[str]:
    """A trainer group's log up to torchrun's own traceback and failure summary: what the
    failed worker printed (its traceback) is the useful tail, not torchrun's report of it."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback") and any("torch/distributed/run.py" in line for line in lines[i : i + 8]):
            return lines[:i] or lines
    return lines


def _torchrun_failed_worker(lines: list[str], own_error_rank: int | None = None) -> tuple[int, int] | None:
    """(global rank, exit code) of the worker to blame in torchrun's failure report; a
    negative code is a signal.

    A worker killed by a signal, wherever the report lists it: torchrun's own "Root Cause"
    is the failure it observed first, and a worker that died of its peer's SIGKILL can be
    observed first. Else the worker whose one-line error leads the group's log
    (`own_error_rank`, from the error's "(global rank N)"): in a one-host group both
    workers exit 1 when one fails on its own and the other loses it, and torchrun lists
    them in either order. Else the first worker listed."""
    pairs, rank = [], None
    for line in lines:
        if rank is None and (m := _TORCHRUN_RANK.match(line)):
            rank = int(m.group(1))
        elif rank is not None and (m := _TORCHRUN_EXIT.match(line)):
            pairs.append((rank, int(m.group(1))))
            rank = None
    if not pairs:
        return None
    killed = [p for p in pairs if p[1] < 0]
    explained = [p for p in pairs if p[0] == own_error_rank]
    return (killed or explained or pairs)[0]


_ERROR_RANK = re.compile(r"\(global rank (\d+)\)$")


def error_rank(error: str | None) -> int | None:
    """The global rank a trainer's one-line error names at its end, if any."""
    match = _ERROR_RANK.search(error or "")
    return int(match.group(1)) if match else None


def torchrun_root_cause(lines: list[str], own_error_rank: int | None = None) -> str | None:
    """The worker torchrun's report blames (see _torchrun_failed_worker): its rank and exit code."""
    found = _torchrun_failed_worker(lines, own_error_rank)
    if found is None:
        return None
    rank, code = found
    if code < 0 and -code in signal.valid_signals():
        return f"trainer global rank {rank} killed by {signal.Signals(-code).name}"
    return f"trainer global rank {rank} exit code {code}"


def format_report(result: RunResult, run_dir: str) -> str:
    """The root-cause report printed when a run fails."""
    cause = result.root_cause
    if cause is None:
        return f"run {result.status} ({result.stop_reason}); run folder {run_dir}"
    lines = [f"root cause: {cause.describe()}"]
    if cause.error is not None:
        lines.append(f"  {cause.error}")
    lines.append(f"last {len(cause.log_tail)} line(s) of {cause.log_path}:")
    lines += [f"  | {line}" for line in cause.log_tail]
    for other in result.failures[1:]:
        lines.append(f"also failed: {other.describe()}")
    lines.append(f"run folder: {run_dir}")
    return "\n".join(lines)
