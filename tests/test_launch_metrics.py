"""Monitoring wired into the launcher: the real `launch` CLI and torchrun, the tiny worker
(tests/launch_worker.py) serving real distgnn metrics; the targets file and the launcher's
own /metrics are read while the run goes on and after it ends."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from distgnn.errors import InputError
from distgnn.metrics import Target, file_sd_path, format_announcement, parse_announcement, read_file_sd
from clusterutil import LAUNCH, TESTS, free_port, only_run, wait_gone
from test_launch_runner import emu_hosts, make_shards, ssh_flags

WAIT_S = 60.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "s1", 1)


def free_block(n: int) -> int:
    """A base port with n free ports from it on 127.0.0.1 and 0.0.0.0 (checked by binding them)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError("no block of free ports")


def launch_argv(tmp_path: Path, shards: Path, *extra: str, train: list[str], hosts: Path | None = None) -> list[str]:
    if hosts is None:
        hosts = tmp_path / "ip.txt"
        hosts.write_text(f"127.0.0.1 {free_port()}\n")
    return [
        *LAUNCH, "--hosts", str(hosts), "--shards", str(shards), "--workspace", str(tmp_path / "ws"),
        "--master-port", str(free_port()), "--server-module", "launch_worker", "--trainer-module", "launch_worker",
        "--env", f"PYTHONPATH={TESTS}", "--env", "WORKER_METRICS=1", "--stop-grace", "5", "--server-linger", "5",
        "--metrics-linger", "30", *extra, "--", "train", *train,
    ]  # fmt: skip


class Launch:
    """A `launch` running in the background, its output in files (a full pipe would stall it)."""

    def __init__(self, argv: list[str], tmp_path: Path) -> None:
        self.out, self.err = tmp_path / "launch.out", tmp_path / "launch.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()[-3000:]}\n--- stderr\n{self.err.read_text()[-3000:]}"

    def targets(self, workspace: Path, want, what: str) -> list[Target]:
        """Poll the run's targets file until `want(targets)`, at most WAIT_S seconds."""
        deadline = time.monotonic() + WAIT_S
        found: list[Target] = []
        while time.monotonic() < deadline:
            runs = workspace / "runs"
            if runs.is_dir() and any(runs.iterdir()):
                try:
                    found = read_file_sd(file_sd_path(only_run(workspace)))
                except InputError:
                    found = []  # not written yet
                if want(found):
                    return found
            ended = self.proc.poll()
            assert ended is None, f"launch ended (exit {ended}) before {what}\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {WAIT_S} s; last targets {found}\n{self.output()}")

    def stop(self) -> None:
        # Ends the linger at once (SIGTERM) or the whole run, if a check failed midway.
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def scrape(target: Target) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{target.hostport}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def final_state(run: Launch, launcher: Target, state: str) -> dict:
    """The launcher's samples once its run state is `state` (set just after the last exit)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        samples = scrape(launcher)
        if value(samples, "distgnn_launcher_run_state", state=state) == 1:
            return samples
        assert time.monotonic() < deadline, f"run state never {state}\n{run.output()}"
        time.sleep(0.1)


def value(samples: dict, name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def processes(samples: dict) -> dict[tuple[str, str], float]:
    return {
        (dict(ls)["role"], dict(ls)["state"]): v
        for (n, ls), v in samples.items()
        if n == "distgnn_launcher_processes" and v
    }


def by_role(targets: list[Target]) -> dict[str, list[Target]]:
    roles: dict[str, list[Target]] = {}
    for t in sorted(targets, key=lambda t: int(t.labels.get("rank", -1))):
        roles.setdefault(t.labels["role"], []).append(t)
    return roles


def test_fixed_ports_targets_follow_the_processes_and_launcher_reports_the_run(tmp_path, shards):
    base = free_block(5)
    go = tmp_path / "go"
    argv = launch_argv(tmp_path, shards, "--metrics-port", str(base), "--servers-per-host", "2",
                       "--trainers-per-host", "2", train=["--wait-file", str(go)])
    run = Launch(argv, tmp_path)
    try:
        targets = run.targets(tmp_path / "ws", lambda ts: len(ts) == 5, "launcher + 2 servers + 2 trainers listed")
        job = only_run(tmp_path / "ws").name
        roles = by_role(targets)
        (launcher,) = roles["launcher"]
        assert (launcher.address, launcher.port) == ("127.0.0.1", base)  # bound to 0.0.0.0, reached at this host
        assert launcher.labels == {"job_id": job, "host": "127.0.0.1", "role": "launcher"}
        for role, first in (("server", base + 1), ("trainer", base + 3)):
            assert [(t.address, t.port) for t in roles[role]] == [("127.0.0.1", first), ("127.0.0.1", first + 1)]
            for rank, t in enumerate(roles[role]):
                assert t.labels == {"job_id": job, "host": "127.0.0.1", "role": role, "rank": str(rank), "part": "0"}
                assert value(scrape(t), "distgnn_process_open_fds") > 0  # a live endpoint
        running = scrape(launcher)
        assert value(running, "distgnn_launcher_run_state", state="running") == 1
        assert value(running, "distgnn_launcher_run_state", state="starting") == 0
        assert processes(running) == {("server", "running"): 2, ("trainer", "running"): 2}
        assert value(running, "distgnn_launcher_start_time_seconds") > time.time() - 120

        go.touch()
        (left,) = run.targets(tmp_path / "ws", lambda ts: len(ts) == 1, "only the launcher listed after the run")
        assert left == launcher
        ended = final_state(run, launcher, "succeeded")  # the linger keeps it visible
        assert processes(ended) == {("server", "succeeded"): 2, ("trainer", "succeeded"): 2}
        assert value(ended, "distgnn_launcher_failures_total", role="trainer") == 0
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.output()  # SIGTERM cut the linger short, not the run's outcome
    assert read_file_sd(file_sd_path(only_run(tmp_path / "ws"))) == []
    assert "launch: keeping /metrics up for 30 s" in run.out.read_text()
    assert wait_gone(only_run(tmp_path / "ws")) == []


def test_auto_ports_are_learned_from_the_processes_and_failures_counted(tmp_path, shards):
    go = tmp_path / "go"
    argv = launch_argv(tmp_path, shards, "--metrics-port", "auto", "--metrics-addr", "127.0.0.1",
                       "--trainers-per-host", "2", train=["--wait-file", str(go), "--fail-rank", "1"])
    run = Launch(argv, tmp_path)
    try:
        targets = run.targets(tmp_path / "ws", lambda ts: len(ts) == 4, "launcher + server + 2 trainers listed")
        folder = only_run(tmp_path / "ws")
        roles = by_role(targets)
        assert len({t.port for t in targets}) == 4
        logs = {role: folder / "logs" / f"127.0.0.1-{role}-0.log" for role in ("server", "trainer")}
        for role in ("server", "trainer"):
            for t in roles[role]:
                # The port each process announced is the one listed, and it serves there.
                line = format_announcement("serving", role, int(t.labels["rank"]), "127.0.0.1", t.port)
                assert line in logs[role].read_text().splitlines()
                assert value(scrape(t), "distgnn_process_open_fds") > 0
        assert [t.labels["rank"] for t in roles["trainer"]] == ["0", "1"]
        assert processes(scrape(roles["launcher"][0])) == {("server", "running"): 1, ("trainer", "running"): 2}

        go.touch()
        (left,) = run.targets(tmp_path / "ws", lambda ts: len(ts) == 1, "only the launcher listed after the failure")
        ended = final_state(run, left, "failed")
        assert value(ended, "distgnn_launcher_failures_total", role="trainer") == 1
        assert value(ended, "distgnn_launcher_failures_total", role="server") == 0
        # The group failed; the server was stopped by the launcher because of it.
        assert processes(ended) == {("server", "failed"): 1, ("trainer", "failed"): 2}
    finally:
        run.stop()
    assert run.proc.returncode == 1, run.output()  # SIGTERM cut the linger short, not the run's outcome
    assert read_file_sd(file_sd_path(folder)) == []
    assert wait_gone(folder) == []


@pytest.mark.netns
def test_remote_processes_are_listed_at_their_hosts(tmp_path, emu):
    shards = make_shards(tmp_path / "s2", 2)
    hosts, _ = emu_hosts(tmp_path, emu)
    base, go = free_block(1), tmp_path / "go"  # the launcher's port here; each emulated host has its own ports
    argv = launch_argv(tmp_path, shards, "--metrics-port", str(base), "--metrics-addr", "127.0.0.1",
                       *ssh_flags(emu.ssh_options()), train=["--wait-file", str(go)], hosts=hosts)
    run = Launch(argv, tmp_path)
    try:
        targets = run.targets(tmp_path / "ws", lambda ts: len(ts) == 5, "launcher + 2 servers + 2 trainers listed")
        job = only_run(tmp_path / "ws").name
        roles = by_role(targets)
        assert [(t.address, t.port, t.labels["host"]) for t in roles["launcher"]] == [("127.0.0.1", base, "127.0.0.1")]
        for role, port in (("server", base + 1), ("trainer", base + 2)):
            for i, t in enumerate(roles[role]):  # rank i on host i: one server and one trainer per host
                address = emu.hosts[i].address
                assert (t.address, t.port) == (address, port)
                assert t.labels == {"job_id": job, "host": address, "role": role, "rank": str(i), "part": str(i)}
                assert value(scrape(t), "distgnn_process_open_fds") > 0
        go.touch()
        (left,) = run.targets(tmp_path / "ws", lambda ts: len(ts) == 1, "only the launcher listed after the run")
        ended = final_state(run, left, "succeeded")
        assert processes(ended) == {("server", "succeeded"): 2, ("trainer", "succeeded"): 2}
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.output()
    assert wait_gone(only_run(tmp_path / "ws")) == []


@pytest.mark.parametrize("bad", ["90x", "-1", "99999"])
def test_malformed_metrics_port_is_one_line_and_exit_2(tmp_path, shards, bad):
    done = subprocess.run(launch_argv(tmp_path, shards, "--metrics-port", bad, train=[]),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"launch: error: --metrics-port: expected a port 0-65535 (0 turns metrics off) or 'auto', got {bad!r}"
    ]
    assert not (tmp_path / "ws").exists()


def test_unwritable_targets_path_is_one_line_and_exit_2_before_anything_starts(tmp_path, shards):
    not_a_folder = tmp_path / "ws"
    not_a_folder.write_text("a file where the workspace folder should be\n")
    argv = launch_argv(tmp_path, shards, "--metrics-port", "auto", "--metrics-addr", "127.0.0.1",
                       "--job-id", "j1", "--env", f"WORKER_PID_DIR={tmp_path}", train=[])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    path = file_sd_path(not_a_folder / "runs" / "j1")
    assert done.stderr.strip().splitlines() == [
        f"launch: error: targets file {path}: cannot write it (Not a directory)"
    ]
    assert list(tmp_path.glob("*.pid")) == []  # no server or trainer was started


def test_announcement_lines_round_trip():
    line = format_announcement("serving", "trainer", 3, "0.0.0.0", 9407)
    assert line == "distgnn-metrics: serving role=trainer rank=3 addr=0.0.0.0 port=9407"
    note = parse_announcement(f"[10.0.0.2 trainer 1] {line}")
    assert (note.event, note.role, note.rank, note.address, note.port) == ("serving", "trainer", 3, "0.0.0.0", 9407)
    stopped = parse_announcement(format_announcement("stopped", "launcher", None, "127.0.0.1", 9400))
    assert (stopped.event, stopped.rank) == ("stopped", None)
    for other in ("distgnn-metrics: serving role=trainer port=x addr=a", "distgnn-metrics: serving", "port=1"):
        assert parse_announcement(other) is None


def test_announcements_of_processes_sharing_a_pipe_stay_whole_lines():
    """The trainers of a host share torchrun's unbuffered stdout; a line written in two pieces
    (text, then newline) ran into another trainer's and hid its port from the launcher."""
    import os
    import sys

    code = ("import sys; from types import SimpleNamespace; from distgnn.metrics import announce\n"
            "for _ in range(400): announce('serving', 'trainer', int(sys.argv[1]), SimpleNamespace(address='a', port=1))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank)], stdout=write, env=env) for rank in (0, 1)]
    os.close(write)
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    ranks = [parse_announcement(line).rank if line.count("distgnn-metrics") == 1 else line for line in lines]
    assert sorted(ranks, key=str) == [0] * 400 + [1] * 400
