"""The run as Prometheus sees it: the launcher's own /metrics and the run's targets file.

Targets come from the processes themselves. Each prints one `distgnn-metrics: serving ...`
line when its exporter is up (distgnn.metrics.format_announcement); the supervisor sees it
in the streamed output, from remote hosts too, and hands it here. With `--metrics-port auto`
that line is the only place a port is known; fixed ports take the same path, so there is
one. A target is listed from its announcement until its process exits (or says `stopped`).

Process states (the launcher's `distgnn_launcher_processes`): `starting` from the spawn
until the process's endpoint is announced, then `running`; at the end `succeeded` (exit 0,
or stopped by the launcher after a successful run) or `failed` (anything else). A torchrun
group stands for its trainers: each trainer is running once it announced, and all share the
group's end state. `failures_total` counts the failures of the root-cause report.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from distgnn import metrics
from distgnn.errors import InputError
from distgnn.launcher.plan import ProcessSpec, RunPlan
from distgnn.metrics import Announcement, Target

WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass
class _Tracked:
    spec: ProcessSpec
    size: int
    """Processes this spec stands for: 1, or the trainers of a torchrun group."""
    announced: set[int] = field(default_factory=set)
    end: str | None = None
    """'succeeded' or 'failed' once the process exited."""


class RunMonitor:
    """Keeps the launcher's metrics and the targets file in step with the run; thread-safe
    (announcements arrive on the supervisor's output threads)."""

    active = True

    def __init__(
        self,
        sink: metrics.LauncherMetrics,
        *,
        plan: RunPlan,
        launcher: Target,
        targets_path: Path,
        err: TextIO,
    ) -> None:
        self.sink = sink
        self.targets_path = targets_path
        self._plan = plan
        self._launcher = launcher
        self._err = err
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._targets: dict[tuple[str, int], Target] = {}
        self._launcher_listed = True
        self._warned = False

    @property
    def launcher_target(self) -> Target:
        return self._launcher

    def publish(self) -> None:
        """Write the targets file now; InputError naming the path when it cannot be written."""
        with self._lock:
            metrics.write_file_sd(self.targets_path, self._current_targets())

    def run_state(self, state: str) -> None:
        self.sink.run_state(state)

    def started(self, spec: ProcessSpec) -> None:
        size = self._plan.host_trainers[spec.host_index] if spec.role == "trainer" else 1
        with self._lock:
            self._tracked[spec.label] = _Tracked(spec, size)
            self._update_counts()

    def announced(self, spec: ProcessSpec, note: Announcement) -> None:
        """A `distgnn-metrics:` line in the output of `spec`'s process."""
        with self._lock:
            tracked = self._tracked.get(spec.label)
            # A late line (read after the exit was seen) or one from another role is not ours to list.
            if tracked is None or tracked.end is not None or note.role != spec.role:
                return
            rank = spec.rank if note.rank is None else note.rank
            if note.event == "serving":
                try:
                    self._targets[(spec.label, rank)] = self._target(spec, rank, note)
                except ValueError:
                    return  # not an endpoint Prometheus could scrape (e.g. port 0): not a target
                tracked.announced.add(rank)
            else:
                self._targets.pop((spec.label, rank), None)
            self._update_counts()
            self._write()

    def ended(self, spec: ProcessSpec, *, succeeded: bool, failure: bool) -> None:
        """`spec`'s process exited; `failure`: it is one of the run's failures (counted by role)."""
        with self._lock:
            tracked = self._tracked.get(spec.label)
            if tracked is None or tracked.end is not None:
                return
            tracked.end = "succeeded" if succeeded else "failed"
            for key in [k for k in self._targets if k[0] == spec.label]:
                del self._targets[key]
            if failure:
                self.sink.failure(spec.role)
            self._update_counts()
            self._write()

    def close(self) -> None:
        """The launcher is leaving: its own target goes, then its endpoint."""
        with self._lock:
            self._targets.clear()
            self._launcher_listed = False
            self._write()
        self.sink.close()

    def _current_targets(self) -> list[Target]:
        listed = [self._launcher] if self._launcher_listed else []
        return listed + [self._targets[k] for k in sorted(self._targets)]

    def _target(self, spec: ProcessSpec, rank: int, note: Announcement) -> Target:
        # A process bound to all interfaces is reached at its ip_config address.
        address = spec.host if note.address in WILDCARDS else note.address
        return metrics.process_target(
            address, note.port, job=self._plan.job_id, host=spec.host, role=spec.role, rank=rank, part=spec.host_index
        )

    def _update_counts(self) -> None:
        counts: Counter[tuple[str, str]] = Counter()
        for t in self._tracked.values():
            if t.end is not None:
                counts[(t.spec.role, t.end)] += t.size
            else:
                running = min(len(t.announced), t.size)
                counts[(t.spec.role, "running")] += running
                counts[(t.spec.role, "starting")] += t.size - running
        self.sink.processes(counts)

    def _write(self) -> None:
        try:
            metrics.write_file_sd(self.targets_path, self._current_targets())
        except InputError as exc:
            # Mid-run, a full disk must not stop the run (nor this output thread): warn once.
            if not self._warned:
                self._warned = True
                self._err.write(f"launch: warning: {exc}; Prometheus will see stale targets\n")


class NullMonitor:
    """Metrics off: nothing served, nothing written."""

    active = False

    def run_state(self, state: str) -> None:
        pass

    def started(self, spec: ProcessSpec) -> None:
        pass

    def announced(self, spec: ProcessSpec, note: Announcement) -> None:
        pass

    def ended(self, spec: ProcessSpec, *, succeeded: bool, failure: bool) -> None:
        pass

    def close(self) -> None:
        pass


NULL_MONITOR = NullMonitor()


def launcher_address(metrics_addr: str, plan: RunPlan) -> str:
    """Where Prometheus reaches the launcher, also its `host` label: the bind address when it
    is a specific one, else this machine's line of the ip_config, else its host name."""
    if metrics_addr not in WILDCARDS:
        return metrics_addr
    for index, entry in enumerate(plan.hosts):
        if plan.host_is_local(index):
            return entry.address
    return socket.gethostname()


def start_monitor(metrics_port: int | str, metrics_addr: str, plan: RunPlan, err: TextIO) -> RunMonitor | NullMonitor:
    """Serve the launcher's /metrics and write the targets file listing it; the null monitor
    when metrics are off. InputError (one line) when the port is taken or the file unwritable."""
    if metrics_port == 0:
        return NULL_MONITOR
    host = launcher_address(metrics_addr, plan)
    sink = metrics.launcher_metrics(metrics_port, metrics_addr, job=plan.job_id, host=host)
    try:
        target = metrics.process_target(host, sink.exporter.port, job=plan.job_id, host=host, role="launcher")
        monitor = RunMonitor(sink, plan=plan, launcher=target, targets_path=metrics.file_sd_path(plan.run_dir), err=err)
        monitor.publish()
    except BaseException:
        sink.close()
        raise
    return monitor
