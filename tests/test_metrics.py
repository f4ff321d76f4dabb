"""distgnn.metrics: the catalogue read back from fresh registries, the exporter, --metrics-port, file_sd."""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import stat
import time
import urllib.request
from pathlib import Path

import pytest

import distgnn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from distgnn import metrics
from distgnn.errors import InputError

IDS = {"job_id": "job-7", "host": "h1", "role": "trainer", "rank": "3", "part": "1"}


def trainer(registry: CollectorRegistry) -> metrics.TrainerMetrics:
    return metrics.TrainerMetrics(registry, job="job-7", host="h1", rank=3, part=1)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ------------------------------------------------------------------ the trainer, after real training steps

def _train(sink: metrics.TrainerMetrics, steps: int) -> list[dict]:
    """A few real optimisation steps of a tiny model, timed per phase as the trainer does."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    done = []
    for i in range(steps):
        t0 = time.perf_counter()
        batch = 16 + 8 * i  # batches differ so a counter that ignores `seeds` is caught
        x, y = torch.randn(batch, 8), torch.randint(0, 3, (batch,))
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        t4 = time.perf_counter()
        record = {
            "phases": {"sample": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3},
            "seeds": batch, "sampled_edges": batch * 10, "remote_bytes": batch * 32, "loss": float(loss),
            "lr": lr, "grad_norm": grad_norm,
        }
        sink.step(**record)
        done.append(record)
    return done


def test_counters_rise_by_what_each_step_processed() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    seeds = edges = 0
    for step, batch in enumerate([64, 17, 1000, 3], start=1):
        sink.step(phases={"sample": 0.01, "forward": 0.02}, seeds=batch, sampled_edges=batch * 7, remote_bytes=0, loss=1.0)
        seeds += batch
        edges += batch * 7
        assert value(registry, "distgnn_trainer_seeds_total", **IDS) == seeds
        assert value(registry, "distgnn_trainer_sampled_edges_total", **IDS) == edges
        assert value(registry, "distgnn_trainer_step_seconds_count", **IDS) == step
        assert value(registry, "distgnn_trainer_step_phase_seconds_count", **IDS, phase="sample") == step


def test_trainer_metrics_after_training_steps() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    records = _train(sink, 5)

    assert value(registry, "distgnn_trainer_seeds_total", **IDS) == sum(r["seeds"] for r in records)
    assert value(registry, "distgnn_trainer_sampled_edges_total", **IDS) == sum(r["sampled_edges"] for r in records)
    assert value(registry, "distgnn_trainer_remote_feature_bytes_total", **IDS) == sum(r["remote_bytes"] for r in records)

    # Every step lands in the step histogram, its time being the sum of its phases.
    assert value(registry, "distgnn_trainer_step_seconds_count", **IDS) == 5
    assert value(registry, "distgnn_trainer_step_seconds_bucket", **IDS, le="+Inf") == 5
    total = sum(sum(r["phases"].values()) for r in records)
    assert value(registry, "distgnn_trainer_step_seconds_sum", **IDS) == pytest.approx(total)
    for phase in ("sample", "forward", "backward", "optimizer"):
        assert value(registry, "distgnn_trainer_step_phase_seconds_count", **IDS, phase=phase) == 5
        assert value(registry, "distgnn_trainer_step_phase_seconds_sum", **IDS, phase=phase) == pytest.approx(
            sum(r["phases"][phase] for r in records)
        )
    # A phase the steps did not report stays at zero.
    assert value(registry, "distgnn_trainer_step_phase_seconds_count", **IDS, phase="fetch") == 0

    last = records[-1]
    assert value(registry, "distgnn_trainer_loss", **IDS) == pytest.approx(last["loss"])
    assert value(registry, "distgnn_trainer_learning_rate", **IDS) == pytest.approx(0.1 * 0.5**4)
    assert value(registry, "distgnn_trainer_grad_norm", **IDS) == pytest.approx(last["grad_norm"])
    # No AMP: no loss-scale series at all, rather than a misleading 0.
    assert value(registry, "distgnn_trainer_amp_loss_scale", **IDS) is None


def test_loss_scale_and_gpu_memory() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    sink.step(phases={"forward": 0.1}, seeds=1, sampled_edges=1, remote_bytes=0, loss=0.5, loss_scale=32768.0)
    assert value(registry, "distgnn_trainer_amp_loss_scale", **IDS) == 32768.0
    assert value(registry, "distgnn_trainer_gpu_memory_bytes", **IDS) is None
    sink.gpu_memory(3 << 20)
    assert value(registry, "distgnn_trainer_gpu_memory_bytes", **IDS) == 3 << 20


def test_explicit_step_seconds_wins_over_the_phase_sum() -> None:
    registry = CollectorRegistry()
    trainer(registry).step(phases={"forward": 0.1, "backward": 0.2}, seconds=0.5, seeds=1, sampled_edges=1,
                           remote_bytes=0, loss=1.0)
    assert value(registry, "distgnn_trainer_step_seconds_sum", **IDS) == 0.5


def test_epoch_end_sets_epoch_duration_and_only_the_evaluated_accuracies() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    sink.epoch_end(epoch=0, seconds=12.5, accuracies={"val": 0.7, "test": 0.68})
    sink.epoch_end(epoch=1, seconds=11.0, accuracies={"val": 0.75})
    assert value(registry, "distgnn_trainer_epoch", **IDS) == 1
    assert value(registry, "distgnn_trainer_epoch_duration_seconds", **IDS) == 11.0
    assert value(registry, "distgnn_trainer_accuracy_ratio", **IDS, split="val") == 0.75
    assert value(registry, "distgnn_trainer_accuracy_ratio", **IDS, split="test") == 0.68
    assert value(registry, "distgnn_trainer_accuracy_ratio", **IDS, split="train") is None


def test_eval_scores_are_one_series_per_split_and_metric() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    sink.eval_scores({"val": {"auc": 0.9, "mrr": 0.41}, "test": {"auc": 0.88}})
    assert value(registry, "distgnn_trainer_eval_score", **IDS, split="val", metric="mrr") == 0.41
    assert value(registry, "distgnn_trainer_eval_score", **IDS, split="test", metric="auc") == 0.88
    assert value(registry, "distgnn_trainer_eval_score", **IDS, split="test", metric="mrr") is None


def test_info_carries_versions_and_config() -> None:
    registry = CollectorRegistry()
    trainer(registry).info({"lr": 0.003, "fanouts": [10, 25], "batch-size": 1000, "job_id": "job-7", "run_dir": None})
    (family,) = [f for f in registry.collect() if f.name == "distgnn_trainer"]
    (sample,) = family.samples
    assert sample.name == "distgnn_trainer_info" and sample.value == 1
    labels = sample.labels
    assert labels["version"] == distgnn.__version__
    assert labels["torch_version"] == "2.2.1" and labels["dgl_version"] == "2.1.0"
    assert labels["lr"] == "0.003" and labels["fanouts"] == "[10, 25]" and labels["batch_size"] == "1000"
    # A config key that clashes with an identity label is kept under a prefix, not dropped or fatal.
    assert labels["job_id"] == "job-7" and labels["config_job_id"] == "job-7"
    assert labels["run_dir"] == ""


def test_unknown_phase_or_split_is_a_programming_error() -> None:
    sink = trainer(CollectorRegistry())
    with pytest.raises(ValueError, match="unknown step phase"):
        sink.step(phases={"feature_fetch": 0.1}, seeds=1, sampled_edges=1, remote_bytes=0, loss=1.0)
    with pytest.raises(ValueError, match="unknown split"):
        sink.epoch_end(epoch=0, seconds=1.0, accuracies={"validation": 0.5})


# ------------------------------------------------------------------ server and launcher

def test_server_metrics() -> None:
    registry = CollectorRegistry()
    sink = metrics.ServerMetrics(registry, job="job-7", host="h0", rank=0, part=0)
    ids = {"job_id": "job-7", "host": "h0", "role": "server", "rank": "0", "part": "0"}
    assert value(registry, "distgnn_server_up", **ids) == 0
    sink.partition(nodes=1000, edges=12000, halo_nodes=150, size_bytes=1 << 22)
    sink.set_up(True)
    assert value(registry, "distgnn_server_up", **ids) == 1
    assert value(registry, "distgnn_server_partition_nodes", **ids) == 1000
    assert value(registry, "distgnn_server_partition_edges", **ids) == 12000
    assert value(registry, "distgnn_server_partition_halo_nodes", **ids) == 150
    assert value(registry, "distgnn_server_partition_bytes", **ids) == 1 << 22
    # This process's own CPU, memory and descriptors, read from /proc.
    assert value(registry, "distgnn_process_resident_memory_bytes") > 10 << 20
    assert value(registry, "distgnn_process_open_fds") >= 3
    assert value(registry, "distgnn_process_cpu_seconds_total") > 0


def test_launcher_metrics() -> None:
    registry = CollectorRegistry()
    sink = metrics.LauncherMetrics(registry, job="job-7", host="h0", start_time=1700000000.0)
    ids = {"job_id": "job-7", "host": "h0"}
    assert value(registry, "distgnn_launcher_start_time_seconds", **ids) == 1700000000.0

    def states() -> dict[str, float]:
        return {s: value(registry, "distgnn_launcher_run_state", **ids, state=s) for s in metrics.RUN_STATES}

    assert states() == {"starting": 1, "running": 0, "succeeded": 0, "failed": 0}
    sink.run_state("running")
    assert states() == {"starting": 0, "running": 1, "succeeded": 0, "failed": 0}

    sink.processes({("server", "running"): 2, ("trainer", "starting"): 4})
    sink.processes({("server", "running"): 2, ("trainer", "running"): 3, ("trainer", "failed"): 1})
    assert value(registry, "distgnn_launcher_processes", **ids, role="trainer", state="running") == 3
    assert value(registry, "distgnn_launcher_processes", **ids, role="trainer", state="failed") == 1
    # Pairs left out of an update drop to zero instead of keeping a stale count.
    assert value(registry, "distgnn_launcher_processes", **ids, role="trainer", state="starting") == 0

    assert value(registry, "distgnn_launcher_failures_total", **ids, role="trainer") == 0
    sink.failure("trainer")
    sink.failure("trainer")
    assert value(registry, "distgnn_launcher_failures_total", **ids, role="trainer") == 2
    assert value(registry, "distgnn_launcher_failures_total", **ids, role="server") == 0
    with pytest.raises(ValueError, match="unknown run state"):
        sink.run_state("done")


def _all_sinks() -> list[CollectorRegistry]:
    registries = [CollectorRegistry() for _ in range(3)]
    t = trainer(registries[0])
    t.step(phases={p: 0.01 for p in metrics.PHASES}, seeds=1, sampled_edges=1, remote_bytes=1, loss=1.0,
           lr=0.1, grad_norm=1.0, loss_scale=2.0)
    t.epoch_end(epoch=0, seconds=1.0, accuracies={"train": 1.0, "val": 1.0, "test": 1.0})
    t.gpu_memory(1)
    t.info({"lr": 0.1})
    metrics.ServerMetrics(registries[1], job="j", host="h", rank=0, part=0)
    metrics.LauncherMetrics(registries[2], job="j", host="h")
    return registries


def test_catalogue_follows_prometheus_naming_and_the_label_policy() -> None:
    identity = {"job_id", "host", "role", "rank", "part"}
    enumerated = {"phase": set(metrics.PHASES), "split": set(metrics.SPLITS), "state": set(metrics.RUN_STATES),
                  "role": set(metrics.ROLES)}
    seen = set()
    for registry in _all_sinks():
        for family in registry.collect():
            assert family.name.startswith("distgnn_"), family.name
            if not family.name.startswith("distgnn_process_"):  # the standard process metrics, in every process
                assert family.name not in seen, f"{family.name} declared twice"
                seen.add(family.name)
            assert family.documentation, family.name
            if family.type == "counter":
                assert any(s.name.endswith("_total") for s in family.samples), family.name
            for sample in family.samples:
                if sample.name.endswith("_info"):
                    continue  # versions and config are what _info metrics are for
                for name, label in sample.labels.items():
                    if name == "le":
                        continue
                    assert name in identity or label in enumerated.get(name, set()), (sample.name, name, label)


def test_null_sinks_accept_every_call_the_real_ones_do() -> None:
    pairs = [(metrics.TrainerMetrics, metrics.NULL_TRAINER_METRICS), (metrics.ServerMetrics, metrics.NULL_SERVER_METRICS),
             (metrics.LauncherMetrics, metrics.NULL_LAUNCHER_METRICS)]
    for real, null in pairs:
        public = {n for n, f in inspect.getmembers(real, inspect.isfunction) if not n.startswith("_")}
        assert public == {n for n, f in inspect.getmembers(type(null), inspect.isfunction) if not n.startswith("_")}
        for name in public:
            assert inspect.signature(getattr(real, name)) == inspect.signature(getattr(type(null), name)), name
    assert metrics.NULL_TRAINER_METRICS.step(phases={}, seeds=1, sampled_edges=1, remote_bytes=1, loss=1.0) is None


# ------------------------------------------------------------------ exporter and --metrics-port

def _scrape(port: int, addr: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_exporter_serves_the_registry_and_frees_its_port() -> None:
    registry = CollectorRegistry()
    sink = trainer(registry)
    sink.step(phases={"forward": 0.2}, seeds=64, sampled_edges=640, remote_bytes=0, loss=0.3)
    exporter = metrics.start_exporter(0, "127.0.0.1", registry)
    try:
        families = {f.name: f for f in text_string_to_metric_families(_scrape(exporter.port))}
        (seeds,) = families["distgnn_trainer_seeds"].samples
        assert seeds.value == 64 and seeds.labels == IDS
        assert "distgnn_process_resident_memory_bytes" in families
    finally:
        exporter.close()
    with socket.socket() as s:  # no listener holds the port any more (SO_REUSEADDR: TIME_WAIT is fine)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", exporter.port))
        s.listen()


def test_factories_serve_at_the_derived_port_or_return_the_null_sink() -> None:
    assert metrics.trainer_metrics(0, "127.0.0.1", job="j", host="h", rank=0, local_rank=0,
                                   servers_per_host=1) is metrics.NULL_TRAINER_METRICS
    assert metrics.server_metrics(0, "127.0.0.1", job="j", host="h", rank=0, part=0, server_index=0,
                                  servers_per_host=1) is metrics.NULL_SERVER_METRICS
    assert metrics.launcher_metrics(0, "127.0.0.1", job="j", host="h") is metrics.NULL_LAUNCHER_METRICS
    base = _free_block(4)
    sink = metrics.trainer_metrics(base, "127.0.0.1", job="j", host="h", rank=5, local_rank=1, servers_per_host=1)
    try:
        # launcher at base, server 0 at base+1, trainers from base+2: local rank 1 at base+3.
        assert sink.exporter.port == base + 3
        assert 'distgnn_trainer_seeds_total{host="h",job_id="j",rank="5",role="trainer"} 0.0' in _scrape(base + 3)
    finally:
        sink.close()


def _free_block(n: int) -> int:
    """A base port with n free ports above it (checked by binding them)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        sockets = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no block of free ports")


def test_port_in_use_is_a_one_line_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError) as err:
            metrics.start_exporter(port, "127.0.0.1", CollectorRegistry())
    message = str(err.value)
    assert f"metrics port {port} on 127.0.0.1 is already in use" in message and "\n" not in message


def test_auto_takes_the_next_free_port() -> None:
    base = _free_block(3)
    with socket.socket() as first, socket.socket() as second:
        for s, p in ((first, base), (second, base + 1)):
            s.bind(("127.0.0.1", p))
            s.listen()
        exporter = metrics.start_exporter("auto", "127.0.0.1", CollectorRegistry(), auto_from=base)
        try:
            assert exporter.port == base + 2
            assert _scrape(exporter.port) == ""  # an empty registry, served
        finally:
            exporter.close()


def test_auto_with_no_free_port_in_range_names_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "AUTO_SPAN", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=rf"^--metrics-port auto: no free metrics port in {port}-{port} on 127.0.0.1$"):
            metrics.start_exporter("auto", "127.0.0.1", CollectorRegistry(), auto_from=port)


def test_unusable_metrics_address_names_the_flag() -> None:
    # 192.0.2.1 (TEST-NET-1) is assigned to no interface here.
    with pytest.raises(InputError, match=r"^--metrics-addr 192\.0\.2\.1: cannot listen on port 0 there"):
        metrics.start_exporter(0, "192.0.2.1", CollectorRegistry())


def test_derived_port_above_65535_names_the_flag() -> None:
    with pytest.raises(InputError, match=r"^--metrics-port 65534: the trainer port 65537 derived from it is above 65535$"):
        metrics.serve_metrics(65534, CollectorRegistry(), role="trainer", addr="127.0.0.1", local_index=1)


@pytest.mark.parametrize("text, expected", [("9400", 9400), ("0", 0), ("auto", "auto"), (" 65535 ", 65535)])
def test_parse_metrics_port(text: str, expected: object) -> None:
    assert metrics.parse_metrics_port(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "65536", "9400.5", "AUTO ish", "0x10"])
def test_malformed_metrics_port_is_a_one_line_error(text: str) -> None:
    with pytest.raises(InputError) as err:
        metrics.parse_metrics_port(text)
    message = str(err.value)
    assert message.startswith("--metrics-port: ") and repr(text) in message and "\n" not in message


# ------------------------------------------------------------------ file_sd targets

def _targets() -> list[metrics.Target]:
    return [
        metrics.process_target("198.18.0.1", 9400, job="job-7", host="h0", role="launcher"),
        metrics.process_target("198.18.0.1", 9401, job="job-7", host="h0", role="server", rank=0, part=0),
        metrics.process_target("198.18.0.2", 9402, job="job-7", host="h1", role="trainer", rank=1, part=1),
        metrics.Target(address="::1", port=9500, labels={"role": "trainer"}),
    ]


def test_file_sd_round_trip_and_shape(tmp_path: Path) -> None:
    path = metrics.file_sd_path(tmp_path / "run")
    metrics.write_file_sd(path, _targets())
    groups = json.loads(path.read_text())
    # The exact shape Prometheus's file_sd reads: a list of {targets: [host:port], labels: {...}}.
    assert groups[2] == {"targets": ["198.18.0.2:9402"], "labels": {
        "host": "h1", "job_id": "job-7", "part": "1", "rank": "1", "role": "trainer"}}
    assert groups[0]["labels"] == {"host": "h0", "job_id": "job-7", "role": "launcher"}
    assert groups[3]["targets"] == ["[::1]:9500"]
    assert metrics.read_file_sd(path) == _targets()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["targets.json"]


def test_file_sd_rewrite_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    metrics.write_file_sd(path, _targets())
    before = path.stat().st_ino
    metrics.write_file_sd(path, _targets()[:1])
    # A new inode renamed over the old one: a reader has the old file or the new one, never half.
    assert path.stat().st_ino != before
    assert metrics.read_file_sd(path) == _targets()[:1]
    assert sorted(os.listdir(tmp_path)) == ["targets.json"]


def test_unwritable_targets_path_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run folder should be\n")
    path = blocker / "prometheus" / "targets.json"
    with pytest.raises(InputError) as err:
        metrics.write_file_sd(path, _targets())
    message = str(err.value)
    assert message.startswith(f"targets file {path}: cannot write it") and "\n" not in message


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.mkdir()  # a folder where the file should be: the final rename fails
    with pytest.raises(InputError, match=re.escape(f"targets file {path}: cannot write it")):
        metrics.write_file_sd(path, _targets())
    assert os.listdir(tmp_path) == ["targets.json"] and path.is_dir() and not os.listdir(path)


def test_invalid_targets_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad target port 0"):
        metrics.Target(address="198.18.0.1", port=0)
    with pytest.raises(ValueError, match="bad target label name '__name__'"):
        metrics.Target(address="198.18.0.1", port=1, labels={"__name__": "x"})
    with pytest.raises(ValueError, match="bad target address"):
        metrics.Target(address="http://h0", port=1)


def test_malformed_targets_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text('[{"targets": ["h0:9400"]}, \n')
    with pytest.raises(InputError, match=re.escape(f"targets file {path}: line 2 column 1:")):
        metrics.read_file_sd(path)
