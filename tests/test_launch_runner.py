"""The launcher with real processes: the real `launch` CLI, real torchrun, a tiny worker
(tests/launch_worker.py) as graph server and trainer; locally and over ssh into emulated hosts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from clusterutil import LAUNCH, PY, TESTS, free_port, only_run, port_free, wait_gone
from clusterutil import run_launch as _run_launch
from distgnn.graph.data import GraphData
from distgnn.ip_config import HostEntry
from distgnn.launcher.config import LaunchConfig
from distgnn.launcher.plan import plan_run
from distgnn.launcher.run import stage_files
from distgnn.partition.run import PartitionConfig
from distgnn.partition.run import run as partition

RUN_TIMEOUT_S = 120
LITERAL = ["--print", "a b", "--name", ";$(touch /tmp/pwned)|&`id`'\"\\ *"]




def make_shards(folder: Path, parts: int) -> Path:
    n = 40
    src = np.arange(n, dtype=np.int64)
    # features and two classes: the real trainer's checks (dry runs, bad options) accept it
    ring = GraphData(name="ring", num_nodes=n, src=src, dst=(src + 1) % n,
                     feat=np.ones((n, 2), dtype=np.float32), label=src % 2, num_classes=2,
                     masks={name: src % 3 == k for k, name in enumerate(("train_mask", "val_mask", "test_mask"))})
    config = PartitionConfig(graph="ring", num_parts=parts, out=folder, method="random", quiet=True)
    partition(config, load=lambda _spec: ring)
    return folder


def launch_argv(hosts: Path, shards: Path, workspace: Path, *extra: str, train: list[str]) -> list[str]:
    return [
        *LAUNCH, "--hosts", str(hosts), "--shards", str(shards), "--workspace", str(workspace),
        "--master-port", str(free_port()), "--metrics-port", "0",
        "--server-module", "launch_worker", "--trainer-module", "launch_worker",
        "--env", f"PYTHONPATH={TESTS}", "--stop-grace", "5", "--server-linger", "5",
        *extra, "--", "train", *train,
    ]  # fmt: skip










def run_launch(argv: list[str], timeout: float = RUN_TIMEOUT_S) -> tuple[subprocess.CompletedProcess, float]:
    return _run_launch(argv, timeout)


def args_lines(stdout: str) -> list[dict]:
    return [json.loads(line.split("ARGS ", 1)[1]) for line in stdout.splitlines() if "ARGS " in line]




@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[int, Path]:
    # A space in every path: paths are passed as argv items, never through a shell.
    root = tmp_path_factory.mktemp("shards") / "with space"
    root.mkdir()
    return {n: make_shards(root / f"s{n}", n) for n in (1, 2)}


def local_hosts(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    hosts = tmp_path / "ip config.txt"
    hosts.write_text(f"127.0.0.1 {port}\n")
    return hosts, port


# -- local host ----------------------------------------------------------------------


def test_local_run_streams_logs_and_passes_arguments_literally(tmp_path, shards):
    hosts, port = local_hosts(tmp_path)
    workspace = tmp_path / "work space"
    argv = launch_argv(hosts, shards[1], workspace, "--env", "WORKER_ECHO=x y;$(id)|&", train=LITERAL)
    done, _ = run_launch(argv)
    assert done.returncode == 0, done.stderr
    run = only_run(workspace)
    (info,) = args_lines(done.stdout)
    assert info["argv"][-4:] == LITERAL and info["echo"] == "x y;$(id)|&"
    assert "[127.0.0.1 trainer 0] a b" in done.stdout
    assert "[127.0.0.1 server 0] server 0 done" in done.stdout
    assert "a b\n" in (run / "logs" / "127.0.0.1-trainer-0.log").read_text()
    assert "server 0 done" in (run / "logs" / "127.0.0.1-server-0.log").read_text()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "succeeded" and status["failures"] == []
    assert json.loads((run / "plan.json").read_text())["job_id"] == run.name
    assert not Path("/tmp/pwned").exists()
    assert wait_gone(run) == [] and port_free("127.0.0.1", port)


def test_local_failure_is_root_cause_and_stops_the_rest(tmp_path, shards):
    hosts, port = local_hosts(tmp_path)
    workspace = tmp_path / "ws"
    # The server fails; the trainer would otherwise sleep for a minute.
    argv = launch_argv(hosts, shards[1], workspace, "--env", "WORKER_SERVER_FAIL=0=7", train=["--sleep", "60"])
    done, took = run_launch(argv)
    assert done.returncode == 1, done.stderr
    assert took < 40
    assert "root cause: host 127.0.0.1 server rank 0: exit code 7" in done.stderr
    assert "  | server 0 failing on purpose" in done.stderr
    run = only_run(workspace)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["failures"][0]["exit_code"] == 7
    assert len(status["failures"]) == 1  # the trainer was stopped by us, not a failure
    assert wait_gone(run) == [] and port_free("127.0.0.1", port)


def test_ctrl_c_to_launch_tears_everything_down(tmp_path, shards):
    hosts, port = local_hosts(tmp_path)
    workspace = tmp_path / "ws"
    argv = launch_argv(hosts, shards[1], workspace, train=["--sleep", "60"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if "ARGS " in line or time.monotonic() > deadline:
                break
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)  # Ctrl-C; the ssh test below sends SIGTERM
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 130, err
    run = only_run(workspace)
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert wait_gone(run) == [] and port_free("127.0.0.1", port)


def test_port_in_use_is_refused_before_anything_starts(tmp_path, shards):
    hosts, port = local_hosts(tmp_path)
    with socket.create_server(("127.0.0.1", port)):
        done, _ = run_launch(launch_argv(hosts, shards[1], tmp_path / "ws", train=[]))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"launch: error: host 127.0.0.1 ({hosts} line 1): port {port} (server) is already in use"
    ]
    assert not (tmp_path / "ws" / "runs").exists()


@pytest.mark.parametrize("train, needle", [
    (["--fanouts", "10,x"], "--fanouts"), (["--batch-size", "0"], "--batch-size 0"), (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"), (["--bogus"], "unrecognized arguments: --bogus"),
    (["--precision", "fp16"], "--precision fp16 needs a GPU"), (["--epochs", "0"], "--epochs 0"),
    (["--model", "gin"], "--model 'gin': expected one of sage, gcn, gat or package.module:factory"),
    (["--model", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
    (["--model", "distgnn.errors:InputErrorz"], "module 'distgnn.errors' has no 'InputErrorz'"),
    (["--model", "distgnn.ports:DEFAULT_SERVER_PORT"], "distgnn.ports.DEFAULT_SERVER_PORT is not callable"),
    (["--model", "gat", "--heads", "0"], "--heads 0: must be at least 1"),
    (["--model", "gat", "--heads", "3", "--hidden", "16"], "--hidden 16: must be a multiple of --heads 3"),
    (["--task", "edge-regression"], "argument --task: invalid choice: 'edge-regression'"),
    (["--task", "link-prediction", "--negatives", "0"], "--negatives 0: must be at least 1"),
    (["--task", "link-prediction", "--scorer", "cosine"], "argument --scorer: invalid choice: 'cosine'"),
    (["--task", "link-prediction", "--samplers", "1"], "--samplers 1: link prediction samples in the trainer"),
    (["--task", "link-prediction"], "link prediction needs held-out edges: partition the graph with --link-split"),
    (["--node-embedding", "-4"], "--node-embedding -4: must be at least 1"),
    (["--node-embedding", "8", "--sparse-lr", "0"], "--sparse-lr 0.0: must be positive"),
    (["--node-embedding", "8", "--sparse-optimizer", "sgd"], "argument --sparse-optimizer: invalid choice"),
    (["--node-embedding", "8", "--precision", "fp16"], "--precision fp16: the sparse"),
])
def test_bad_train_options_are_refused_before_anything_starts(tmp_path, shards, train, needle):
    hosts, _port = local_hosts(tmp_path)
    # the real trainer (launch_argv injects a stand-in, whose options are not checked)
    argv = [*LAUNCH, "--hosts", str(hosts), "--shards", str(shards[1]), "--workspace", str(tmp_path / "ws"),
            "--metrics-port", "0", "--", "train", *train]
    done, took = run_launch(argv, 60)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("launch: error: ") and needle in line, line
    assert not (tmp_path / "ws" / "runs").exists()  # nothing started
    assert took < 10  # a second or two here; a started server alone takes longer


def test_gpus_per_host_beyond_the_host_is_refused(tmp_path, shards):
    hosts, _ = local_hosts(tmp_path)
    done, _ = run_launch(launch_argv(hosts, shards[1], tmp_path / "ws", "--gpus-per-host", "64", train=[]))
    assert done.returncode == 2
    assert f"launch: error: --gpus-per-host 64: host 127.0.0.1 ({hosts} line 1) has" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ws" / "runs").exists()


def test_a_host_without_the_allocator_library_is_refused(tmp_path, shards, monkeypatch):
    import distgnn.launcher.run as launch_run
    from distgnn.errors import InputError
    from distgnn.launcher.probe import missing_libraries
    from distgnn.launcher.runner import LocalRunner

    assert missing_libraries(["libtcmalloc_minimal.so.4"]) == []  # make installs libtcmalloc-minimal4
    assert missing_libraries(["libdistgnn-absent.so.9"]) == ["libdistgnn-absent.so.9"]
    hosts = tmp_path / "ip.txt"
    cfg = LaunchConfig(hosts_file=hosts, shards=shards[1], train_args=[], python=PY, workspace=tmp_path)
    plan = plan_run(cfg, [HostEntry("127.0.0.1", free_port(), 1)], local={"127.0.0.1"},
                    run_dir=tmp_path / "run", job_id="j", num_parts=1)
    # the real probe process, asked about a library this host lacks
    monkeypatch.setattr(launch_run, "TCMALLOC", "libdistgnn-absent.so.9")
    with pytest.raises(InputError) as err:
        launch_run.probe_host(cfg, plan, LocalRunner(host="127.0.0.1"), 0)
    assert str(err.value) == (
        f"host 127.0.0.1 ({hosts} line 1): --allocator tcmalloc needs libdistgnn-absent.so.9, which is not "
        "installed there (Debian: libtcmalloc-minimal4); install it or pass --allocator system"
    )
    monkeypatch.setattr(launch_run, "TCMALLOC", "libtcmalloc_minimal.so.4")
    assert launch_run.probe_host(cfg, plan, LocalRunner(host="127.0.0.1"), 0).busy == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "ip_config file not found"),
        ("malformed", "ip.txt:2: port 'x' is not an integer"),
        ("parts", "the manifest has 2 part(s) but --hosts"),
        ("twice", "is the same machine as line 1"),
        ("env", "--env 'NOEQUALS': expected NAME=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, shards, case, message):
    hosts = tmp_path / "ip.txt"
    hosts.write_text({"malformed": "127.0.0.1 40000\n127.0.0.2 x\n", "twice": "127.0.0.1 40000\n127.0.0.2 40000\n"}
                     .get(case, "127.0.0.1 40000\n"))
    if case == "missing":
        hosts.unlink()
    extra = ["--env", "NOEQUALS"] if case == "env" else []
    done, _ = run_launch(launch_argv(hosts, shards[2 if case == "parts" else 1], tmp_path / "ws", *extra, train=[]))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch: error: ") and message in lines[0], done.stderr


def test_staging_gives_each_host_only_its_own_part(tmp_path, shards):
    cfg = LaunchConfig(hosts_file=tmp_path / "ip.txt", shards=shards[2], train_args=[], python=PY,
                       workspace=tmp_path, stage_shards=True)
    hosts = [HostEntry("10.9.0.1", 30050, 1), HostEntry("10.9.0.2", 30050, 2)]
    plan = plan_run(cfg, hosts, local={"10.9.0.1"}, run_dir=tmp_path / "run", job_id="j", num_parts=2)
    def part(p: int) -> list[tuple[Path, str]]:
        names = [f"parts/part-0000{p}.json", *(f"{t}/part={p}/data.parquet" for t in ("nodes", "edges", "halo"))]
        return [(shards[2] / name, f"shards/{name}") for name in names]

    assert stage_files(plan, 0) == [(shards[2] / "manifest.json", "shards/manifest.json"), *part(0)]
    assert stage_files(plan, 1) == [(tmp_path / "run" / "ip_config.txt", "ip_config.txt"),
                                    (shards[2] / "manifest.json", "shards/manifest.json"), *part(1)]


# -- remote_exec: what stops a remote process when its ssh connection goes -------------


@pytest.mark.parametrize("how", ["stdin-eof", "sigterm"])
def test_remote_exec_stops_the_whole_group(tmp_path, how):
    marker = tmp_path / "pids"
    script = f"sleep 60 & echo $! > '{marker}'; sleep 60"
    proc = subprocess.Popen([PY, "-m", "distgnn.launcher.remote_exec", "--grace", "2", "--", "sh", "-c", script],
                            stdin=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        group = [*psutil.Process(proc.pid).children(), psutil.Process(int(marker.read_text()))]
        if how == "stdin-eof":
            proc.stdin.close()
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(group, timeout=5)
        assert alive == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


# -- remote hosts: real sshd per emulated host (network namespaces, needs root) ---------


def emu_hosts(tmp_path: Path, emu, addresses: list[str] | None = None) -> tuple[Path, int]:
    port = free_port()
    hosts = tmp_path / "ip.txt"
    hosts.write_text("".join(f"{a} {port}\n" for a in addresses or [h.address for h in emu.hosts]))
    return hosts, port


def ssh_flags(options: list[str]) -> list[str]:
    return [f"--ssh-option={opt}" for opt in options]


@pytest.mark.netns
def test_ssh_run_on_two_hosts_with_staged_shards(tmp_path, shards, emu):
    hosts, _ = emu_hosts(tmp_path, emu)
    workspace = tmp_path / "work space"
    argv = launch_argv(hosts, shards[2], workspace, "--stage-shards", "--env", "WORKER_ECHO=$(id) ;|&",
                       *ssh_flags(emu.ssh_options()), train=LITERAL)
    done, _ = run_launch(argv)
    assert done.returncode == 0, done.stderr
    run = only_run(workspace)
    infos = sorted(args_lines(done.stdout), key=lambda i: i["rank"])
    assert [i["rank"] for i in infos] == [0, 1] and all(i["world"] == 2 for i in infos)
    for info in infos:
        assert info["argv"][-4:] == LITERAL and info["echo"] == "$(id) ;|&"
        assert info["argv"][info["argv"].index("--shards") + 1] == str(run / "shards")
    for i, host in enumerate(emu.hosts):
        assert f"[{host.address} server {i}] server {i} done" in done.stdout
        assert (run / "logs" / f"{host.address}-trainer-{i}.log").read_text().count("ARGS ") == 1
    assert (run / "shards" / "parts" / "part-00001.json").exists()
    assert wait_gone(run) == []


@pytest.mark.netns
def test_ssh_first_failure_stops_all_hosts_and_is_root_cause(tmp_path, shards, emu):
    hosts, port = emu_hosts(tmp_path, emu)
    workspace = tmp_path / "ws"
    argv = launch_argv(hosts, shards[2], workspace, "--env", "WORKER_SERVER_FAIL=1=7",
                       *ssh_flags(emu.ssh_options()), train=["--sleep", "60"])
    done, took = run_launch(argv)
    assert done.returncode == 1, done.stderr
    assert took < 45
    h1 = emu.hosts[1].address
    assert f"root cause: host {h1} server rank 1: exit code 7" in done.stderr
    assert "  | server 1 failing on purpose" in done.stderr
    run = only_run(workspace)
    assert wait_gone(run) == []
    status = json.loads((run / "status.json").read_text())
    assert status["failures"][0]["host"] == h1 and status["failures"][0]["role"] == "server"


@pytest.mark.netns
def test_ssh_sigterm_leaves_nothing_on_any_host(tmp_path, shards, emu):
    hosts, port = emu_hosts(tmp_path, emu)
    workspace = tmp_path / "ws"
    argv = launch_argv(hosts, shards[2], workspace, *ssh_flags(emu.ssh_options()), train=["--sleep", "60"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        for line in proc.stdout:
            seen += "ARGS " in line
            if seen == 2:
                break
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 143, err
    run = only_run(workspace)
    assert wait_gone(run) == []
    for i, host in enumerate(emu.hosts):
        probe = emu.run(i, [PY, "-m", "distgnn.launcher.probe", "--address", host.address, "--port", str(port)],
                        timeout=30)
        assert json.loads(probe.stdout)["busy"] == []


@pytest.mark.netns
def test_ssh_unknown_host_key_is_refused(tmp_path, shards, emu):
    hosts, _ = emu_hosts(tmp_path, emu)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = ["-F", "none", "-i", str(emu.client_key), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={empty}", "-o", "GlobalKnownHostsFile=/dev/null"]
    done, _ = run_launch(launch_argv(hosts, shards[2], tmp_path / "ws", *ssh_flags(options), train=[]))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"launch: error: host {emu.hosts[0].address} (")
    assert "unknown or changed SSH host key" in line


@pytest.mark.netns
def test_ssh_unreachable_host_fails_fast_naming_it(tmp_path, shards, emu):
    nobody = emu.hosts[1].address.rsplit(".", 1)[0] + ".250"  # in the emulated subnet, nothing there
    hosts, _ = emu_hosts(tmp_path, emu, [emu.hosts[0].address, nobody])
    done, took = run_launch(launch_argv(hosts, shards[2], tmp_path / "ws", "--connect-timeout", "5",
                                        *ssh_flags(emu.ssh_options()), train=[]))
    assert done.returncode == 2 and took < 30
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"launch: error: host {nobody} (") and "unreachable over ssh" in line


@pytest.mark.netns
def test_ssh_port_in_use_on_a_remote_host_is_refused(tmp_path, shards, emu):
    hosts, port = emu_hosts(tmp_path, emu)
    h1 = emu.hosts[1].address
    holder = emu.popen(1, [PY, "-c", f"import socket,time; s=socket.create_server(('{h1}', {port})); "
                                     "print('up', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"up"
        done, _ = run_launch(launch_argv(hosts, shards[2], tmp_path / "ws", *ssh_flags(emu.ssh_options()), train=[]))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"launch: error: host {h1} ({hosts} line 2): port {port} (server) is already in use"
    ]


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, shards, capsys):
    from distgnn.launcher.cli import main

    hosts, port = local_hosts(tmp_path)
    common = ["--hosts", str(hosts), "--shards", str(shards[1]), "--workspace", str(tmp_path / "ws")]
    assert main([*common, "--dry-run", "--", "train", "--checkpoint-dir", "a b"]) == 0
    text = capsys.readouterr().out
    assert "host 0 127.0.0.1 (local)" in text and "--checkpoint-dir 'a b'" in text and f"{port}" in text
    assert "liveness: a process silent, or a trainer without a batch, for 300 s ends the job" in text
    assert main([*common, "--dry-run=json", "--gpus-per-host", "2", "--", "train"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus_per_host"] == 2 and data["processes"][1]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert not (tmp_path / "ws").exists()


def test_a_dry_run_plans_with_names_it_does_not_resolve(tmp_path, shards, capsys):
    """A plan for a cluster this machine cannot see yet: no lookup, no contact; a real launch
    still refuses the name with one line."""
    from distgnn.launcher.cli import main

    hosts = tmp_path / "ip_config.txt"
    hosts.write_text("gpu-node-1.invalid 30050 gpus=2\ngpu-node-2.invalid 30050 gpus=1\n")
    common = ["--hosts", str(hosts), "--shards", str(shards[2]), "--workspace", str(tmp_path / "ws"),
              "--master-port", "29500"]
    assert main([*common, "--dry-run", "--", "train"]) == 0
    text = capsys.readouterr().out
    assert "host names not resolved (dry run; a real launch resolves them first): gpu-node-1.invalid, " \
           "gpu-node-2.invalid" in text
    assert "host 1 gpu-node-2.invalid (ssh), 1 trainer(s)" in text and "2/1 trainers (host 0/1/...) (one per GPU)" in text
    assert main([*common, "--", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"launch: error: {hosts}:1: cannot resolve host 'gpu-node-1.invalid'")
    assert not (tmp_path / "ws").exists()


def test_gpus_per_host_auto_counts_each_host_s_gpus(tmp_path, shards, capsys):
    """The count comes from each host itself; this machine has none, so the real probe
    refuses it in one line. Counts found are planned per host, a `gpus=N` line winning."""
    from dataclasses import replace

    from distgnn.launcher.cli import config_from_args, main
    from distgnn.launcher.run import make_plan

    hosts, _ = local_hosts(tmp_path)
    common = ["--hosts", str(hosts), "--shards", str(shards[1]), "--workspace", str(tmp_path / "ws"),
              "--gpus-per-host", "auto", "--metrics-port", "0"]
    assert main([*common, "--", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"launch: error: --gpus-per-host auto: host 127.0.0.1 ({hosts} line 1) has no GPU; a job trains "
                   "on GPUs on every host or on none"]
    assert not (tmp_path / "ws").exists()
    two = tmp_path / "two.txt"
    two.write_text("10.9.0.1 30050\n10.9.0.2 30050 gpus=1\n")
    cfg = config_from_args(["--hosts", str(two), "--shards", str(shards[2]), "--gpus-per-host", "auto",
                            "--master-port", "29500", "--trainer-module", "launch_worker", "--", "train"])
    assert cfg.gpus_auto
    plan = make_plan(replace(cfg, dry_run="json"), [4, 8])
    assert plan.host_trainers == [4, 1] and plan.on_gpu
    assert make_plan(replace(cfg, dry_run="json")).host_trainers == [1, 1]  # a dry run counts nothing
    assert main(["--hosts", str(hosts), "--shards", "s", "--gpus-per-host", "two", "--", "train"]) == 2
    assert "--gpus-per-host: expected a number or 'auto', got 'two'" in capsys.readouterr().err


def test_the_rendezvous_port_is_a_free_one_unless_given(tmp_path, shards, capsys):
    """Two launches started together must not both take torchrun's 29500."""
    from distgnn.launcher.cli import main

    hosts, _ = local_hosts(tmp_path)
    common = ["--hosts", str(hosts), "--shards", str(shards[1]), "--workspace", str(tmp_path / "ws"),
              "--dry-run=json", "--metrics-port", "0"]
    with socket.create_server(("127.0.0.1", 0)) as busy:
        ports = []
        for _ in range(2):
            assert main([*common, "--", "train"]) == 0
            ports.append(json.loads(capsys.readouterr().out)["master_port"])
        assert busy.getsockname()[1] not in ports
    assert all(1 <= p <= 65535 and port_free("127.0.0.1", p) for p in ports)
    assert main([*common, "--master-port", "29611", "--", "train"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["master_port"] == 29611 and "29611" in data["processes"][1]["argv"]


def test_failing_trainer_names_torchrun_root_cause(tmp_path, shards):
    hosts, port = local_hosts(tmp_path)
    workspace = tmp_path / "ws"
    done, took = run_launch(launch_argv(hosts, shards[1], workspace, train=["--fail-rank", "0", "--fail-code", "9"]))
    assert done.returncode == 1 and took < 40, done.stderr
    assert "root cause: host 127.0.0.1 trainer rank 0: exit code 1 (trainer global rank 0 exit code 9)" in done.stderr
    assert wait_gone(only_run(workspace)) == [] and port_free("127.0.0.1", port)


@pytest.mark.parametrize("feat, label, needle", [
    (False, None, "node classification needs node features: the graph has no 'feat' column "
                  "(learn them instead with --node-embedding DIM)"),
    (True, None, "node classification needs labels: the graph has no 'label' column"),
    (True, -1, "needs labels of at least 2 classes in column 'label': no node is labelled (every label is -1)"),
    (True, 1, "node classification needs train/val/test masks: the graph has no 'train_mask' column"),
    (True, "regression", "node regression needs targets: the graph has no 'target' column"),
], ids=["no-features", "no-labels", "all-unlabelled", "no-masks", "regression-without-targets"])
def test_a_task_on_a_graph_lacking_its_columns_is_refused_before_anything_starts(
        tmp_path, feat, label, needle):
    n = 40
    src = np.arange(n, dtype=np.int64)
    graph = GraphData(name="ring", num_nodes=n, src=src, dst=(src + 1) % n,
                      feat=np.ones((n, 4), dtype=np.float32) if feat else None,
                      label={None: None, "regression": None, -1: np.full(n, -1), 1: np.arange(n) % 2}[label],
                      num_classes=2 if label == 1 else None)
    config = PartitionConfig(graph="ring", num_parts=1, out=tmp_path / "shards", method="random", quiet=True)
    partition(config, load=lambda _spec: graph)
    hosts, _port = local_hosts(tmp_path)
    argv = [*LAUNCH, "--hosts", str(hosts), "--shards", str(tmp_path / "shards"), "--workspace",
            str(tmp_path / "ws"), "--metrics-port", "0", "--", "train"]
    if label == "regression":
        argv += ["--task", "node-regression"]
    done, _ = run_launch(argv, 60)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("launch: error: ") and needle in line, line
    assert not (tmp_path / "ws" / "runs").exists()
