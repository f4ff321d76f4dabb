"""The launch plan as plain data: 1, 2 and 8 hosts, CPU and GPU, and the config's bad input."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from distgnn.errors import InputError
from distgnn.ip_config import HostEntry
from distgnn.launcher.cli import config_from_args
from distgnn.launcher.config import LaunchConfig, parse_env_pairs
from distgnn.launcher.plan import check_gpus, format_plan, plan_run, plan_to_json

RUN = Path("/ws/runs/job1")


def _hosts(n: int) -> list[HostEntry]:
    return [HostEntry(f"10.0.0.{i + 1}", 30050, i + 1) for i in range(n)]


def _cfg(**kw) -> LaunchConfig:
    base = dict(hosts_file=Path("/cfg/ip.txt"), shards=Path("/data/shards"), train_args=["--epochs", "3"],
                python="/venv/bin/python", workspace=Path("/ws"), metrics_port=9400)
    return LaunchConfig(**{**base, **kw})


def _plan(n: int, local: set[str] = frozenset(), **kw):
    return plan_run(_cfg(**kw), _hosts(n), local=set(local), run_dir=RUN, job_id="job1", num_parts=n, cpu_count=8)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("n", [1, 2, 8])
def test_cpu_plan_has_servers_and_one_torchrun_group_per_host(n):
    plan = _plan(n, trainers_per_host=2, servers_per_host=2, samplers=1)
    assert len(plan.processes) == n * 3
    assert plan.num_clients == 2 * (1 + 1) * n
    assert plan.master_addr == "10.0.0.1"
    for i, entry in enumerate(plan.hosts):
        servers = [p for p in plan.on_host(i) if p.role == "server"]
        (group,) = [p for p in plan.on_host(i) if p.role == "trainer"]
        assert [s.rank for s in servers] == [2 * i, 2 * i + 1]
        for k, s in enumerate(servers):
            assert s.argv[:3] == ["/venv/bin/python", "-m", "distgnn.trainer.server"]
            assert _flag(s.argv, "--part") == str(i)
            assert _flag(s.argv, "--server-index") == str(k)
            assert _flag(s.argv, "--num-clients") == str(4 * n)
            assert _flag(s.argv, "--ip-config") == str(RUN / "ip_config.txt")
            assert s.ports == [30050 + k, 9400 + 1 + k]
            assert s.log_path == RUN / "logs" / f"{entry.address}-server-{2 * i + k}.log"
        assert group.argv[:3] == ["/venv/bin/python", "-m", "torch.distributed.run"]
        assert _flag(group.argv, "--nnodes") == str(n)
        assert _flag(group.argv, "--node-rank") == str(i)
        assert _flag(group.argv, "--nproc-per-node") == "2"
        assert _flag(group.argv, "--master-addr") == "10.0.0.1"
        assert _flag(group.argv, "--log-dir") == str(RUN / "logs" / f"{entry.address}-torchrun")  # not /tmp
        assert group.argv[group.argv.index("-m", 3) + 1] == "distgnn.trainer.cli"
        assert group.argv[-2:] == ["--epochs", "3"]  # user arguments last: they win
        assert _flag(group.argv, "--job-id") == "job1" and _flag(group.argv, "--run-dir") == str(RUN)
        assert _flag(group.argv, "--servers-per-host") == "2" and _flag(group.argv, "--samplers") == "1"
        assert "CUDA_VISIBLE_DEVICES" not in group.env
        assert group.ports == ([29500] if i == 0 else []) + [9403, 9404]
        assert group.env["OMP_NUM_THREADS"] == "2"  # 8 cores / (2 servers + 2 trainers)
        assert group.env["DGL_DIST_MAX_TRY_TIMES"] == "30" and group.env["PYTHONUNBUFFERED"] == "1"
        assert not group.local
    assert plan.host_ports(0) == [9401, 9402, 9403, 9404, 29500, 30050, 30051]


@pytest.mark.parametrize("n", [1, 2, 8])
def test_gpu_plan_has_one_trainer_per_gpu_each_owning_a_device(n):
    plan = _plan(n, gpus_per_host=4)
    assert plan.num_clients == 4 * n
    for i in range(n):
        (group,) = [p for p in plan.on_host(i) if p.role == "trainer"]
        assert _flag(group.argv, "--nproc-per-node") == "4"
        assert group.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
        # nccl is the trainer's own choice on CUDA; the plan does not force a backend.
        assert "--backend" not in group.argv
        (server,) = [p for p in plan.on_host(i) if p.role == "server"]
        assert "CUDA_VISIBLE_DEVICES" not in server.env


def test_gpu_counts_are_checked_per_host():
    cfg = _cfg(gpus_per_host=2)
    check_gpus(cfg, _hosts(2), [2, 8], [2, 2])
    with pytest.raises(InputError, match=r"--gpus-per-host 2: host 10.0.0.2 \(/cfg/ip.txt line 2\) has 1 GPU"):
        plan_run(cfg, _hosts(2), local=set(), run_dir=RUN, job_id="j", num_parts=2, gpu_counts=[2, 1])


def _counted(*counts: dict) -> list[HostEntry]:
    return [HostEntry(f"10.0.0.{i + 1}", 30050, i + 1, **c) for i, c in enumerate(counts)]


def test_gpu_hosts_and_cpu_hosts_do_not_mix():
    with pytest.raises(InputError, match=r"host 10.0.0.3 \(/cfg/ip.txt line 3\): no GPU count for a job that "
                                         r"trains on GPUs"):
        plan_run(_cfg(), _counted({"gpus": 4}, {"gpus": 2}, {}), local=set(), run_dir=RUN, job_id="j")
    with pytest.raises(InputError, match=r"line 2\): trainers=2 asks for CPU trainers, but this job trains on GPUs"):
        plan_run(_cfg(gpus_per_host=1), _counted({}, {"trainers": 2}), local=set(), run_dir=RUN, job_id="j")


def test_per_host_counts_set_torchrun_ports_devices_and_the_split_layout():
    from distgnn.trainer.split import TRAINERS_ENV

    plan = plan_run(_cfg(gpus_per_host=1, master_port=29500), _counted({"gpus": 4}, {}, {"gpus": 2}), local=set(),
                    run_dir=RUN, job_id="j", num_parts=3, cpu_count=8)
    assert plan.host_trainers == [4, 1, 2] and plan.on_gpu and plan.world_size == 7 and plan.num_clients == 7
    groups = [p for p in plan.processes if p.role == "trainer"]
    assert [_flag(g.argv, "--nproc-per-node") for g in groups] == ["4", "1", "2"]
    assert [g.env["CUDA_VISIBLE_DEVICES"] for g in groups] == ["0,1,2,3", "0", "0,1"]
    assert all(g.env[TRAINERS_ENV] == "4,1,2" for g in groups)
    assert len(groups[0].ports) == 1 + 4 and len(groups[2].ports) == 2  # rendezvous on host 0; metrics
    assert "4/1/2 trainers (host 0/1/...) (one per GPU)" in format_plan(plan)
    same = plan_run(_cfg(trainers_per_host=2, master_port=29500), _counted({}, {"trainers": 2}), local=set(),
                    run_dir=RUN, job_id="j")
    assert same.host_trainers == [2, 2] and all(TRAINERS_ENV not in p.env for p in same.processes)


def test_local_hosts_are_marked_and_user_env_wins():
    plan = _plan(2, local={"10.0.0.1"}, env={"OMP_NUM_THREADS": "7", "X": "a b;$(c)"}, metrics_port=0)
    assert [p.local for p in plan.processes] == [True, True, False, False]
    assert all(p.env["OMP_NUM_THREADS"] == "7" and p.env["X"] == "a b;$(c)" for p in plan.processes)
    assert plan.on_host(1)[0].ports == [30050]  # metrics off: no metrics ports


def test_servers_and_trainers_get_tcmalloc_unless_the_system_allocator_is_asked_for():
    plan = _plan(2)
    assert all(p.env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" for p in plan.processes)
    plan = _plan(2, allocator="system")
    assert all("LD_PRELOAD" not in p.env for p in plan.processes)
    assert config_from_args(_args("--allocator", "system")).allocator == "system"
    with pytest.raises(InputError, match="--allocator 'jemalloc': expected one of tcmalloc, system"):
        _cfg(allocator="jemalloc")


def test_auto_metrics_ports_are_left_to_the_processes():
    plan = _plan(2, metrics_port="auto", trainers_per_host=2)
    assert [p.ports for p in plan.on_host(1)] == [[30050], []]  # only the process knows an 'auto' port
    assert all(_flag(p.argv, "--metrics-port") == "auto" for p in plan.processes)
    assert config_from_args(_args("--metrics-port", "auto")).metrics_port == "auto"
    assert "metrics: base port auto (the launcher's), targets /ws/runs/job1/prometheus/targets.json" in format_plan(plan)


def test_staged_shards_are_read_from_the_run_folder():
    plan = _plan(2, stage_shards=True)
    assert plan.shards_path == RUN / "shards" and plan.shards_source == Path("/data/shards")
    assert all(_flag(p.argv, "--shards") == str(RUN / "shards") for p in plan.processes)


def test_injected_modules_replace_server_and_trainer():
    plan = _plan(1, server_module="launch_worker", trainer_module="launch_worker")
    assert plan.processes[0].argv[2] == "launch_worker"
    assert plan.processes[1].argv[plan.processes[1].argv.index("-m", 3) + 1] == "launch_worker"


def test_parts_must_match_hosts_both_ways():
    for parts, hosts in ((3, 2), (1, 2)):
        with pytest.raises(InputError, match=rf"manifest has {parts} part\(s\) but --hosts /cfg/ip.txt lists {hosts}"):
            plan_run(_cfg(), _hosts(hosts), local=set(), run_dir=RUN, job_id="j", num_parts=parts)


def test_plan_json_and_text_forms():
    plan = _plan(2, train_args=["--name", "a b", ";$(rm -rf /)|&"])
    data = json.loads(json.dumps(plan_to_json(plan)))
    assert data["processes"][1]["argv"][-3:] == ["--name", "a b", ";$(rm -rf /)|&"]
    assert data["processes"][0]["log_path"] == str(RUN / "logs" / "10.0.0.1-server-0.log")
    text = format_plan(plan)
    assert "host 1 10.0.0.2 (ssh)" in text
    trainer_line = [line for line in text.splitlines() if "torch.distributed.run" in line][0]
    assert shlex.split(trainer_line.split("argv ", 1)[1])[-3:] == ["--name", "a b", ";$(rm -rf /)|&"]


def _args(*extra: str) -> list[str]:
    return ["--hosts", "ip.txt", "--shards", "s", *extra, "--", "train", "--lr", "0.1"]


def test_cli_splits_train_arguments_untouched():
    # an injected trainer's arguments are its own (the real trainer's are checked, see
    # test_launch_runner's bad-train-options test)
    argv = ["--hosts", "ip.txt", "--shards", "s", "--env", "A=1=2", "--trainer-module", "my_trainer",
            "--", "train", "--", "x y", "--hosts"]
    cfg = config_from_args(argv)
    assert cfg.train_args == ["--", "x y", "--hosts"]
    assert cfg.env == {"A": "1=2"}
    assert cfg.hosts_file.is_absolute() and cfg.trainers == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hosts", "ip.txt", "--shards", "s"], "missing '-- train"),
        (["--hosts", "ip.txt", "--shards", "s", "--", "python", "x.py"], "expected 'train' after '--', got 'python'"),
        (_args("--env", "NOEQUALS"), "--env 'NOEQUALS': expected NAME=VALUE"),
        (_args("--env", "1A=x"), "'1A' is not a valid environment variable name"),
        (_args("--servers-per-host", "0"), "--servers-per-host 0: must be at least 1"),
        (_args("--trainers-per-host", "0"), "--trainers-per-host 0: must be at least 1"),
        (_args("--master-port", "70000"), "--master-port 70000"),
        (_args("--metrics-port", "-1"), "--metrics-port: expected a port 0-65535 (0 turns metrics off) or 'auto', got '-1'"),
        (_args("--metrics-linger", "400"), "--metrics-linger 400.0: must be in [0, 300] s"),
        (_args("--metrics-addr", ""), "--metrics-addr '': expected an address"),
        (_args("--job-id", "../x"), "--job-id '../x'"),
        (_args("--dgl-max-try-times", "0"), "--dgl-max-try-times 0: must be at least 1"),
    ],
)
def test_cli_bad_input_names_the_flag(argv, message):
    with pytest.raises(InputError) as err:
        config_from_args(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_env_pairs_keep_values_literally():
    assert parse_env_pairs(["A=", "B=x y", "C=$(true);|&"]) == {"A": "", "B": "x y", "C": "$(true);|&"}


def test_torchrun_root_cause_is_read_from_its_report():
    from distgnn.launcher.supervise import torchrun_root_cause

    tail = ["Root Cause (first observed failure):", "[0]:", "  time      : 2026-11-22_23:33:47",
            "  host      : localhost", "  rank      : 3 (local_rank: 1)", "  exitcode  : 9 (pid: 11870)"]
    assert torchrun_root_cause(tail) == "trainer global rank 3 exit code 9"
    assert torchrun_root_cause([*tail[:-1], "  exitcode  : -9 (pid: 1)"]) == "trainer global rank 3 killed by SIGKILL"
    assert torchrun_root_cause(["Traceback (most recent call last):"]) is None



@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--hosts", "ip.txt", "-h"], ["-h", "--", "train"]])
def test_help_prints_and_exits_0_without_a_train_command(argv, capsys):
    with pytest.raises(SystemExit) as ended:
        config_from_args(argv)
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: launch") and "--hang-timeout" in out


@pytest.mark.parametrize("module", ["distgnn.partition.cli", "distgnn.trainer.cli", "distgnn.launcher.cli",
                                    "distgnn.report"])
def test_help_shows_every_default_and_the_fixed_choices(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    if module == "distgnn.trainer.cli":
        for shown in ("--optimizer {adamw,adam}", "--precision {fp32,bf16,fp16}", "--backend {auto,gloo,nccl}",
                      "(default: 1000)", "(default: 0.003)", "(default: node-classification)"):
            assert shown in text, shown
        assert "optimisation:" in done.stdout and "task and model:" in done.stdout
    if module == "distgnn.partition.cli":
        assert "--method {metis,random}" in text and "--seed SEED seed for METIS or the random assignment (default 0)" in text


def test_a_bad_choice_is_one_line_and_exit_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "distgnn.partition.cli", "--graph", "x", "--num-parts", "2",
                           "--out", "o", "--method", "spectral"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "partition: error: argument --method: invalid choice: 'spectral' (choose from 'metis', 'random')"]
