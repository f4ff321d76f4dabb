"""The distgnn metric catalogue, the per-process /metrics exporter and the Prometheus targets file.

Every metric a distgnn process exposes is declared in this module, once: its name, type,
help text and labels. Names follow Prometheus conventions: one `distgnn_` prefix, base
units (`_seconds`, `_bytes`, `_ratio`), `_total` on counters.

Labels. Each metric carries the identity of the process that exposes it:
`job_id`, `host`, `role`, `rank`, `part` (constant for the life of a process; the
launcher's metrics carry `job_id` and `host` only). A few metrics add one enumerated
label whose values are fixed here (`phase`, `split`, `state`, and `role` on the
launcher's per-role process counts), so no label ever takes unbounded values such as a
node id, a step number or a path. `job_id` is not called `job` because Prometheus owns
that label (the scrape job name).

The same identity is written as target labels into the file_sd targets file, so the
standard process metrics (`distgnn_process_*`, which cannot carry labels) are labelled
by Prometheus; deploy/prometheus/prometheus.yml sets `honor_labels: true`, so where
both carry a label the process's own value wins.

Each class takes the registry it registers into (a fresh one per test); `NULL_*`
sinks with the same methods do nothing, so the training loop never asks whether
monitoring is on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from distgnn import __version__, ports
from distgnn.atomic import atomic_write_text
from distgnn.errors import InputError
from distgnn.runlog import write_line

NAMESPACE = "distgnn"

ROLES = ("launcher", "server", "trainer")
PROCESS_ROLES = ("server", "trainer")
PHASES = ("sample", "fetch", "forward", "backward", "optimizer")
"""Phases of one training step: neighbour sampling, feature fetch (local and remote),
forward, backward, optimizer. `optimizer` includes waiting for the gradient
all-reduce to finish: DDP overlaps the all-reduce with backward, and only its tail
is visible as a separate wait before the optimizer step."""
SPLITS = ("train", "val", "test")
RUN_STATES = ("starting", "running", "succeeded", "failed")
PROCESS_STATES = ("starting", "running", "succeeded", "failed")

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Step and phase time buckets (seconds): a mini-batch step on a small graph takes
milliseconds, one on a large graph with remote features several seconds."""

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_VERSIONED_PACKAGES = ("torch", "dgl", "numpy", "prometheus_client")


def _identity(job: str, host: str, role: str, rank: int | None = None, part: int | None = None) -> dict[str, str]:
    """The identity labels of one process; the single place they are spelled."""
    if not job:
        raise ValueError("job id must not be empty")
    if not host:
        raise ValueError("host must not be empty")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    labels = {"job_id": job, "host": host, "role": role}
    if rank is not None:
        labels["rank"] = str(int(rank))
    if part is not None:
        labels["part"] = str(int(part))
    return labels


def _process_collector(registry: CollectorRegistry) -> None:
    # CPU seconds, resident memory, open fds and start time of this process, read from /proc.
    ProcessCollector(namespace=NAMESPACE, registry=registry)


class _Served:
    """The exporter a factory (trainer_metrics, ...) started for a sink, closed with it."""

    exporter: "Exporter | None" = None
    role: str = ""
    labels: dict[str, str]

    def close(self) -> None:
        """Stop serving /metrics, if this sink is served (and say so: see announce)."""
        if self.exporter is not None:
            exporter, self.exporter = self.exporter, None
            exporter.close()
            announce("stopped", self.role, self.labels.get("rank"), exporter)


class TrainerMetrics(_Served):
    """Metrics of one trainer process (one rank)."""

    role = "trainer"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        job: str,
        host: str,
        rank: int,
        part: int | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = _identity(job, host, "trainer", rank, part)
        names = tuple(self.labels)
        reg = self.registry
        self._step = Histogram(
            "distgnn_trainer_step_seconds", "Wall time of one training step.",
            names, registry=reg, buckets=STEP_BUCKETS,
        ).labels(**self.labels)
        phase = Histogram(
            "distgnn_trainer_step_phase_seconds",
            "Wall time of one phase of a training step: sample (neighbour sampling), fetch (feature fetch), "
            "forward, backward, optimizer (includes the wait for the gradient all-reduce).",
            names + ("phase",), registry=reg, buckets=STEP_BUCKETS,
        )
        self._phase = {p: phase.labels(**self.labels, phase=p) for p in PHASES}
        self._seeds = self._counter("distgnn_trainer_seeds_total", "Seed (target) nodes trained on.")
        self._edges = self._counter("distgnn_trainer_sampled_edges_total", "Edges in the sampled blocks trained on.")
        self._remote = self._counter(
            "distgnn_trainer_remote_feature_bytes_total", "Feature bytes fetched from graph servers on other hosts."
        )
        self._loss = self._gauge("distgnn_trainer_loss", "Training loss of the last step.")
        self._lr = self._gauge("distgnn_trainer_learning_rate", "Learning rate used by the last step.")
        self._grad_norm = self._gauge("distgnn_trainer_grad_norm", "L2 norm of the gradients of the last step (before clipping).")
        self._loss_scale = self._gauge("distgnn_trainer_amp_loss_scale", "AMP gradient scaler's loss scale (absent without AMP).")
        self._epoch = self._gauge("distgnn_trainer_epoch", "Number of the last finished epoch (0-based).")
        self._epoch_seconds = self._gauge("distgnn_trainer_epoch_duration_seconds", "Wall time of the last finished epoch.")
        accuracy = Gauge(
            "distgnn_trainer_accuracy_ratio", "Accuracy on a split (train, val, test) after the last evaluated epoch.",
            names + ("split",), registry=reg,
        )
        self._accuracy = {s: _LazyChild(accuracy, {**self.labels, "split": s}) for s in SPLITS}
        self._score = Gauge(
            "distgnn_trainer_eval_score", "A task's evaluation metrics on a split after the last evaluated epoch "
            "(accuracy; link prediction: auc, mrr, hits@10, hits@50; regression: mse, mae, r2).",
            names + ("split", "metric"), registry=reg,
        )
        self._gpu = self._gauge("distgnn_trainer_gpu_memory_bytes", "GPU memory allocated by tensors of this rank (CUDA only).")
        self._info = Info("distgnn_trainer", "Versions and training configuration of this trainer.", names, registry=reg)
        _process_collector(reg)

    def _counter(self, name: str, doc: str) -> Any:
        return Counter(name, doc, tuple(self.labels), registry=self.registry).labels(**self.labels)

    def _gauge(self, name: str, doc: str) -> Any:
        # The child (the exposed series) is made on the first set(): a gauge never set,
        # such as the loss scale without AMP, is absent rather than a misleading 0.
        return _LazyChild(Gauge(name, doc, tuple(self.labels), registry=self.registry), self.labels)

    def step(
        self,
        *,
        phases: Mapping[str, float],
        seeds: int,
        sampled_edges: int,
        remote_bytes: int,
        loss: float,
        lr: float | None = None,
        grad_norm: float | None = None,
        loss_scale: float | None = None,
        seconds: float | None = None,
    ) -> None:
        """Record one training step. `seconds` is the step's wall time; by default the
        sum of the phases. Phases not given are not observed for this step."""
        unknown = sorted(set(phases) - set(PHASES))
        if unknown:
            raise ValueError(f"unknown step phase(s) {unknown}; expected {', '.join(PHASES)}")
        for name, phase_seconds in phases.items():
            self._phase[name].observe(phase_seconds)
        self._step.observe(sum(phases.values()) if seconds is None else seconds)
        self._seeds.inc(seeds)
        self._edges.inc(sampled_edges)
        self._remote.inc(remote_bytes)
        self._loss.set(loss)
        if lr is not None:
            self._lr.set(lr)
        if grad_norm is not None:
            self._grad_norm.set(grad_norm)
        if loss_scale is not None:
            self._loss_scale.set(loss_scale)

    def epoch_end(self, epoch: int, seconds: float, accuracies: Mapping[str, float]) -> None:
        """Record a finished epoch, its wall time and the accuracies evaluated after it
        (any subset of train, val, test)."""
        unknown = sorted(set(accuracies) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
        self._epoch.set(epoch)
        self._epoch_seconds.set(seconds)
        for split, value in accuracies.items():
            self._accuracy[split].set(value)

    def eval_scores(self, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Every metric of every evaluated split ({split: {metric: value}})."""
        for split, values in scores.items():
            for metric, value in values.items():
                self._score.labels(**self.labels, split=split, metric=metric).set(value)

    def info(self, config: Mapping[str, object]) -> None:
        """Publish versions and the training configuration as `distgnn_trainer_info`.

        Config keys become label names (characters other than letters, digits and `_`
        turn into `_`; `config_` is prepended to a key that would clash with an identity
        or version label); values are written with str(), None as an empty string.
        """
        values = _versions()
        for key, value in config.items():
            name = _label_name(str(key))
            if name in values or name in self.labels:
                name = f"config_{name}"
            values[name] = "" if value is None else str(value)
        self._info.labels(**self.labels).info(values)

    def gpu_memory(self, allocated_bytes: int) -> None:
        """Record the GPU memory currently allocated by this rank (torch.cuda.memory_allocated)."""
        self._gpu.set(allocated_bytes)


class _LazyChild:
    """One labelled gauge series, created when first set."""

    def __init__(self, parent: Gauge, labels: Mapping[str, str]) -> None:
        self._parent = parent
        self._labels = dict(labels)

    def set(self, value: float) -> None:
        self._parent.labels(**self._labels).set(value)


def _label_name(key: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    if name.startswith("__"):
        # Prometheus reserves labels starting with "__".
        name = "cfg" + name
    return name


def _versions() -> dict[str, str]:
    versions = {"version": __version__, "python_version": ".".join(map(str, sys.version_info[:3]))}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[f"{package}_version"] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[f"{package}_version"] = ""
    return versions


class ServerMetrics(_Served):
    """Metrics of one graph server process."""

    role = "server"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        job: str,
        host: str,
        rank: int,
        part: int,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = _identity(job, host, "server", rank, part)
        names = tuple(self.labels)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, names, registry=self.registry).labels(**self.labels)

        self._up = gauge("distgnn_server_up", "1 while the graph server serves its partition, 0 while it loads or stops.")
        self._nodes = gauge("distgnn_server_partition_nodes", "Nodes owned by the served partition.")
        self._edges = gauge("distgnn_server_partition_edges", "Edges stored in the served partition (edges into owned nodes).")
        self._halo = gauge("distgnn_server_partition_halo_nodes", "Halo nodes (owned by other partitions) in the served partition.")
        self._bytes = gauge("distgnn_server_partition_bytes", "Bytes of the served partition's graph structure and features.")
        self._up.set(0)
        _process_collector(self.registry)

    def partition(self, *, nodes: int, edges: int, halo_nodes: int, size_bytes: int) -> None:
        """Record the size of the partition this server loaded."""
        self._nodes.set(nodes)
        self._edges.set(edges)
        self._halo.set(halo_nodes)
        self._bytes.set(size_bytes)

    def set_up(self, up: bool) -> None:
        """Mark the server as serving (True) or not (False)."""
        self._up.set(1 if up else 0)


class LauncherMetrics(_Served):
    """Metrics of the launcher: the run as a whole and its processes."""

    role = "launcher"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        job: str,
        host: str,
        start_time: float | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # The launcher's `role` label counts other processes' roles, so its own
        # identity is job and host only (its target labels still say role=launcher).
        labels = _identity(job, host, "launcher")
        self.labels = {"job_id": labels["job_id"], "host": labels["host"]}
        names = tuple(self.labels)
        reg = self.registry
        processes = Gauge(
            "distgnn_launcher_processes", "Processes of the run by role and state.",
            names + ("role", "state"), registry=reg,
        )
        self._processes = {
            (role, state): processes.labels(**self.labels, role=role, state=state)
            for role in PROCESS_ROLES for state in PROCESS_STATES
        }
        run_state = Gauge(
            "distgnn_launcher_run_state", "1 for the run's current state (starting, running, succeeded, failed), 0 for the others.",
            names + ("state",), registry=reg,
        )
        self._run_state = {s: run_state.labels(**self.labels, state=s) for s in RUN_STATES}
        self._start = Gauge(
            "distgnn_launcher_start_time_seconds", "Unix time the run started.", names, registry=reg,
        ).labels(**self.labels)
        failures = Counter(
            "distgnn_launcher_failures_total", "Processes of the run that exited with an error, by role.",
            names + ("role",), registry=reg,
        )
        self._failures = {role: failures.labels(**self.labels, role=role) for role in PROCESS_ROLES}
        self._start.set(time.time() if start_time is None else start_time)
        for child in self._failures.values():
            child.inc(0)
        self.run_state("starting")
        _process_collector(reg)

    def run_state(self, state: str) -> None:
        """Set the run's state: starting, running, succeeded or failed."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; expected one of {', '.join(RUN_STATES)}")
        for name, child in self._run_state.items():
            child.set(1 if name == state else 0)

    def processes(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the number of processes per (role, state); pairs not given are 0."""
        unknown = sorted(set(counts) - set(self._processes))
        if unknown:
            raise ValueError(f"unknown (role, state) pair(s) {unknown}")
        for key, child in self._processes.items():
            child.set(counts.get(key, 0))

    def failure(self, role: str) -> None:
        """Count one process of `role` that exited with an error."""
        if role not in self._failures:
            raise ValueError(f"unknown process role {role!r}; expected one of {', '.join(PROCESS_ROLES)}")
        self._failures[role].inc()


class NullTrainerMetrics:
    """TrainerMetrics that records nothing (metrics off)."""

    registry = None
    exporter = None

    def close(self) -> None:
        pass

    def step(
        self,
        *,
        phases: Mapping[str, float],
        seeds: int,
        sampled_edges: int,
        remote_bytes: int,
        loss: float,
        lr: float | None = None,
        grad_norm: float | None = None,
        loss_scale: float | None = None,
        seconds: float | None = None,
    ) -> None:
        pass

    def epoch_end(self, epoch: int, seconds: float, accuracies: Mapping[str, float]) -> None:
        pass

    def eval_scores(self, scores: Mapping[str, Mapping[str, float]]) -> None:
        pass

    def info(self, config: Mapping[str, object]) -> None:
        pass

    def gpu_memory(self, allocated_bytes: int) -> None:
        pass


class NullServerMetrics:
    """ServerMetrics that records nothing (metrics off)."""

    registry = None
    exporter = None

    def close(self) -> None:
        pass

    def partition(self, *, nodes: int, edges: int, halo_nodes: int, size_bytes: int) -> None:
        pass

    def set_up(self, up: bool) -> None:
        pass


class NullLauncherMetrics:
    """LauncherMetrics that records nothing (metrics off)."""

    registry = None
    exporter = None

    def close(self) -> None:
        pass

    def run_state(self, state: str) -> None:
        pass

    def processes(self, counts: Mapping[tuple[str, str], int]) -> None:
        pass

    def failure(self, role: str) -> None:
        pass


NULL_TRAINER_METRICS = NullTrainerMetrics()
NULL_SERVER_METRICS = NullServerMetrics()
NULL_LAUNCHER_METRICS = NullLauncherMetrics()


# ---------------------------------------------------------------- --metrics-port and the exporter

MetricsPort = int | Literal["auto"]

AUTO_SPAN = 100
"""How many ports `auto` tries upward from a process's derived port."""


def parse_metrics_port(text: str) -> MetricsPort:
    """The value of --metrics-port: a base port 1-65535, 0 (metrics off) or 'auto'.

    Call it on the raw string after argparse (not as `type=`: argparse would replace
    the message with its own).
    """
    value = text.strip()
    if value == "auto":
        return "auto"
    if not re.fullmatch(r"[0-9]+", value) or int(value) > 65535:
        raise InputError(f"--metrics-port: expected a port 0-65535 (0 turns metrics off) or 'auto', got {text!r}")
    return int(value)


@dataclass(kw_only=True)
class Exporter:
    """A running /metrics endpoint; close() stops it and frees the port."""

    address: str
    """The address it listens on, as given."""
    port: int
    """The port it actually listens on."""
    _server: Any = field(repr=False)
    _thread: Any = field(repr=False)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_exporter(
    port: MetricsPort,
    addr: str,
    registry: CollectorRegistry,
    *,
    auto_from: int = ports.DEFAULT_METRICS_PORT,
) -> Exporter:
    """Serve `registry` at http://addr:port/metrics from a daemon thread.

    `port` 0 binds a free port chosen by the system (tests); 'auto' takes the first free
    port from `auto_from` upward (AUTO_SPAN ports). A port in use is an InputError naming it.
    """
    if port == "auto":
        return _start_auto(auto_from, addr, registry)
    if not 0 <= port <= 65535:
        raise InputError(f"metrics port {port} is out of range 0-65535 (check --metrics-port)")
    try:
        return _bind(port, addr, registry)
    except OSError as exc:
        raise _bind_error(port, addr, exc) from exc


def _bind(port: int, addr: str, registry: CollectorRegistry) -> Exporter:
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return Exporter(address=addr, port=server.server_port, _server=server, _thread=thread)


def _start_auto(first: int, addr: str, registry: CollectorRegistry) -> Exporter:
    last = min(first + AUTO_SPAN - 1, 65535)
    for candidate in range(first, last + 1):
        try:
            return _bind(candidate, addr, registry)
        except OSError as exc:
            # Only a taken port moves the scan on; anything else fails the same on every port.
            if exc.errno != errno.EADDRINUSE:
                raise _bind_error(candidate, addr, exc) from exc
    raise InputError(f"--metrics-port auto: no free metrics port in {first}-{last} on {addr}")


def _bind_error(port: int, addr: str, exc: OSError) -> InputError:
    if exc.errno == errno.EADDRINUSE:
        return InputError(
            f"metrics port {port} on {addr} is already in use "
            "(choose another --metrics-port, or --metrics-port auto for the next free one)"
        )
    if exc.errno == errno.EACCES:
        return InputError(f"metrics port {port} on {addr}: permission denied (ports below 1024 need root)")
    return InputError(f"--metrics-addr {addr}: cannot listen on port {port} there ({exc.strerror or exc})")


def serve_metrics(
    flag: MetricsPort,
    registry: CollectorRegistry | None,
    *,
    role: str,
    addr: str,
    local_index: int = 0,
    servers_per_host: int = 1,
) -> Exporter | None:
    """Start this process's exporter from its --metrics-port value, or None when metrics
    are off (flag 0, or a null sink's registry None). The port is derived with
    distgnn.ports.metrics_port; with 'auto' the scan starts at the port derived from the
    default base."""
    if flag == 0 or registry is None:
        return None
    base = ports.DEFAULT_METRICS_PORT if flag == "auto" else flag
    derived = ports.metrics_port(base, role, local_index, servers_per_host)
    if flag == "auto":
        return start_exporter("auto", addr, registry, auto_from=derived)
    if derived > 65535:
        raise InputError(f"--metrics-port {flag}: the {role} port {derived} derived from it is above 65535")
    return start_exporter(derived, addr, registry)


def trainer_metrics(
    flag: MetricsPort,
    addr: str,
    *,
    job: str,
    host: str,
    rank: int,
    local_rank: int,
    servers_per_host: int,
    part: int | None = None,
) -> TrainerMetrics | NullTrainerMetrics:
    """A trainer's metrics served at its derived port, or the null sink when --metrics-port is 0."""
    if flag == 0:
        return NULL_TRAINER_METRICS
    sink = TrainerMetrics(job=job, host=host, rank=rank, part=part)
    sink.exporter = serve_metrics(
        flag, sink.registry, role="trainer", addr=addr, local_index=local_rank, servers_per_host=servers_per_host
    )
    _announce_sink(sink)
    return sink


def server_metrics(
    flag: MetricsPort,
    addr: str,
    *,
    job: str,
    host: str,
    rank: int,
    part: int,
    server_index: int,
    servers_per_host: int,
) -> ServerMetrics | NullServerMetrics:
    """A graph server's metrics served at its derived port, or the null sink when --metrics-port is 0.
    `rank` is the server's global id, `server_index` its index on the host."""
    if flag == 0:
        return NULL_SERVER_METRICS
    sink = ServerMetrics(job=job, host=host, rank=rank, part=part)
    sink.exporter = serve_metrics(
        flag, sink.registry, role="server", addr=addr, local_index=server_index, servers_per_host=servers_per_host
    )
    _announce_sink(sink)
    return sink


def launcher_metrics(flag: MetricsPort, addr: str, *, job: str, host: str) -> LauncherMetrics | NullLauncherMetrics:
    """The launcher's metrics served at the base port, or the null sink when --metrics-port is 0."""
    if flag == 0:
        return NULL_LAUNCHER_METRICS
    sink = LauncherMetrics(job=job, host=host)
    sink.exporter = serve_metrics(flag, sink.registry, role="launcher", addr=addr)
    _announce_sink(sink)
    return sink


# ---------------------------------------------------------------- the announcement line

ANNOUNCE_PREFIX = "distgnn-metrics:"
_ANNOUNCE = re.compile(r"distgnn-metrics: (serving|stopped) ((?:[a-z_]+=\S+ ?)+)$")


@dataclass(frozen=True, kw_only=True)
class Announcement:
    """One `distgnn-metrics:` line: a process's /metrics endpoint came up or went away.

    With `--metrics-port auto` only the process knows its port; the launcher learns it
    from this line in the process's output (streamed over ssh from remote hosts too)."""

    event: Literal["serving", "stopped"]
    role: str
    rank: int | None
    """The process's rank label (trainer: global rank; server: DGL server id); None for the launcher."""
    address: str
    """The address the endpoint is bound to, as given (may be 0.0.0.0)."""
    port: int


def format_announcement(event: str, role: str, rank: object, address: str, port: int) -> str:
    """The line a process prints when its exporter starts ('serving') or stops ('stopped')."""
    fields = [f"role={role}"] + ([] if rank is None else [f"rank={int(rank)}"]) + [f"addr={address}", f"port={port}"]
    return f"{ANNOUNCE_PREFIX} {event} {' '.join(fields)}"


def parse_announcement(line: str) -> Announcement | None:
    """The announcement in one output line (anywhere in it: tools may prefix lines), or None."""
    if ANNOUNCE_PREFIX not in line:
        return None
    match = _ANNOUNCE.search(line.rstrip())
    if not match:
        return None
    fields = dict(item.split("=", 1) for item in match.group(2).split())
    try:
        return Announcement(
            event=match.group(1),  # type: ignore[arg-type]
            role=fields["role"],
            rank=int(fields["rank"]) if "rank" in fields else None,
            address=fields["addr"],
            port=int(fields["port"]),
        )
    except (KeyError, ValueError):
        return None


def announce(event: str, role: str, rank: object, exporter: Exporter) -> None:
    """Print the announcement on stdout. A process whose stdout is gone has nobody to tell."""
    try:
        write_line(sys.stdout, format_announcement(event, role, rank, exporter.address, exporter.port))
    except (OSError, ValueError):
        pass


def _announce_sink(sink: _Served) -> None:
    if sink.exporter is not None:
        announce("serving", sink.role, sink.labels.get("rank"), sink.exporter)


# ---------------------------------------------------------------- file_sd targets

@dataclass(frozen=True, kw_only=True)
class Target:
    """One /metrics endpoint in the targets file."""

    address: str
    """Host name or IP address Prometheus connects to."""
    port: int
    """The endpoint's port."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Target labels (see process_target for the identity labels)."""

    def __post_init__(self) -> None:
        if not self.address or any(c.isspace() for c in self.address) or "/" in self.address:
            raise ValueError(f"bad target address {self.address!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"bad target port {self.port} for {self.address}")
        for name, value in self.labels.items():
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"bad target label name {name!r}")
            if not isinstance(value, str):
                raise ValueError(f"target label {name} must be a string, got {value!r}")

    @property
    def hostport(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def process_target(
    address: str, port: int, *, job: str, host: str, role: str, rank: int | None = None, part: int | None = None
) -> Target:
    """The target of one distgnn process, labelled with the same identity its metrics carry."""
    return Target(address=address, port=port, labels=_identity(job, host, role, rank, part))


def file_sd_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run's targets file lives (deploy/ mounts the run folder and reads this path)."""
    return Path(run_dir) / "prometheus" / "targets.json"


def write_file_sd(path: str | os.PathLike[str], targets: Sequence[Target]) -> None:
    """Write the Prometheus file_sd targets file atomically (Prometheus watches it and
    must never read half a file), creating its folder; InputError naming the path when
    it cannot be written."""
    path = Path(path)
    groups = [{"targets": [t.hostport], "labels": dict(sorted(t.labels.items()))} for t in targets]
    text = json.dumps(groups, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0644: Prometheus (a container user in deploy/compose.yml) must read it.
        atomic_write_text(path, text, mode=0o644)
    except OSError as exc:
        raise InputError(f"targets file {path}: cannot write it ({exc.strerror or exc})") from exc


def read_file_sd(path: str | os.PathLike[str]) -> list[Target]:
    """Read a targets file written by write_file_sd."""
    path = Path(path)
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"targets file {path}: cannot read it ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"targets file {path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    targets = []
    try:
        for group in groups:
            for hostport in group["targets"]:
                address, _, port = hostport.rpartition(":")
                targets.append(Target(address=address.strip("[]"), port=int(port), labels=dict(group.get("labels", {}))))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"targets file {path}: not a file_sd target list ({exc})") from exc
    return targets

