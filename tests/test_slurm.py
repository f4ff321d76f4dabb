"""`launch --hosts slurm`: hosts from a Slurm allocation, processes started with srun.

The parsing tests need no cluster. The others run real Slurm daemons from Debian: one
slurmctld on this machine and a slurmd inside each of the two emulated hosts, which are
the allocation's two nodes (tests/slurm_cluster.py); jobs are started with the real
salloc and sbatch, and every remote process with srun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clusterutil import LAUNCH, REPO, TESTS, free_port, leftovers, only_run, wait_gone
from distgnn import runlog
from distgnn.errors import InputError
from distgnn.launcher import slurm
from distgnn.launcher.cli import config_from_args
from distgnn.launcher.plan import plan_run
from distgnn.launcher.run import load_hosts

BIN = Path(LAUNCH[0]).parent
PUBMED = REPO / "data" / "pubmed"
TRAIN = ["--fanouts", "10,25", "--eval-fanouts=-1,-1", "--batch-size", "32", "--hidden", "64", "--lr", "0.01",
         "--feature-norm", "row", "--epochs", "8", "--eval-every", "2"]
SLURM_TIMEOUT_S = 300


# -- the allocation, without a cluster ------------------------------------------------------------


def fake_scontrol(outputs: dict[str, str]):
    """A stand-in for scontrol's answers in the parsing tests: hostlists expand by a table."""

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        if argv[:2] == ["show", "hostnames"]:
            out = {"host[0-1]": "host0\nhost1\n", "gpu[01-02]": "gpu01\ngpu02\n", "gpu01": "gpu01\n",
                   "gpu02": "gpu02\n"}[argv[2]]
            return subprocess.CompletedProcess(argv, 0, out, "")
        key = " ".join(argv[:2])
        if key in outputs:
            return subprocess.CompletedProcess(argv, 0, outputs[key], "")
        return subprocess.CompletedProcess(argv, 1, "", f"slurm_load_jobs error: Invalid job id specified ({key})")

    return run


NODES_TEXT = (
    "NodeName=gpu01 Arch=x86_64 CoresPerSocket=16 Gres=gpu:a100:4 NodeAddr=10.1.0.11 NodeHostName=gpu01\n"
    "NodeName=gpu02 Arch=x86_64 CoresPerSocket=16 Gres=gpu:a100:4 NodeAddr=10.1.0.12 NodeHostName=gpu02\n"
)
JOB_TEXT = """JobId=7 JobName=distgnn
   NodeList=gpu[01-02]
   JOB_GRES=gpu:a100:6
     Nodes=gpu01 CPU_IDs=0-31 Mem=0 GRES=gpu:a100:4(IDX:0-3)
     Nodes=gpu02 CPU_IDs=0-15 Mem=0 GRES=gpu:a100:2(IDX:2-3)
"""


def test_allocation_nodes_addresses_and_the_gpus_the_job_holds():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    nodes = slurm.allocation_nodes(env, fake_scontrol({"show node": NODES_TEXT, "show job": JOB_TEXT}))
    assert nodes == [slurm.SlurmNode("gpu01", "10.1.0.11", 4), slurm.SlurmNode("gpu02", "10.1.0.12", 2)]


def test_gres_strings():
    assert slurm.gres_gpus("gpu:4(IDX:0-3)") == 4
    assert slurm.gres_gpus("gpu:a100:2(IDX:0-1),nic:1") == 2
    assert slurm.gres_gpus("") == 0
    assert slurm.gres_gpus("(null)") == 0


def test_no_allocation_is_one_line():
    with pytest.raises(InputError, match="not inside a Slurm allocation"):
        slurm.allocation_nodes({}, fake_scontrol({}))
    with pytest.raises(InputError, match="--hosts: give an ip_config file, or 'slurm'"):
        config_from_args(["--shards", "x", "--", "train"], environ={})


def test_scontrol_failure_is_one_line():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    with pytest.raises(InputError, match=r"scontrol show job failed: .*Invalid job id"):
        slurm.allocation_nodes(env, fake_scontrol({"show node": NODES_TEXT}))


def slurm_config(monkeypatch, tmp_path, nodes, *extra):
    monkeypatch.setattr(slurm, "allocation_nodes", lambda environ: nodes)
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    return config_from_args(["--shards", str(tmp_path), "--trainer-module", "launch_worker", *extra, "--", "train"],
                            environ=env)


def test_nodes_train_with_the_gpus_the_job_holds_there_unless_told(monkeypatch, tmp_path):
    nodes = [slurm.SlurmNode("gpu01", "10.1.0.11", 4), slurm.SlurmNode("gpu02", "10.1.0.12", 2)]

    def planned(*extra):
        cfg = slurm_config(monkeypatch, tmp_path, nodes, "--master-port", "29511", *extra)
        plan = plan_run(cfg, load_hosts(cfg, set()), local=set(), run_dir=tmp_path / "run", job_id="j")
        return plan.host_trainers, plan.on_gpu, plan.num_clients

    assert planned() == ([4, 2], True, 6)
    assert planned("--gpus-per-host", "2") == ([2, 2], True, 4)
    assert planned("--trainers-per-host", "3") == ([3, 3], False, 6)
    half = [slurm.SlurmNode("gpu01", "10.1.0.11", 4), slurm.SlurmNode("cpu01", "10.1.0.13", 0)]
    monkeypatch.setattr(slurm, "allocation_nodes", lambda environ: half)
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "x"}
    cfg = config_from_args(["--shards", str(tmp_path), "--trainer-module", "w", "--", "train"], environ=env)
    with pytest.raises(InputError, match=r"host 10.1.0.13 \(Slurm node cpu01\): no GPU count for a job that trains"):
        load_and_plan(cfg, tmp_path)


def load_and_plan(cfg, tmp_path):
    return plan_run(cfg, load_hosts(cfg, set()), local=set(), run_dir=tmp_path / "run", job_id="j")


def test_the_plan_starts_remote_nodes_with_srun_and_leaves_their_gpus_to_slurm(monkeypatch, tmp_path):
    nodes = [slurm.SlurmNode("gpu01", "10.1.0.11", 4), slurm.SlurmNode("gpu02", "10.1.0.12", 4)]
    cfg = slurm_config(monkeypatch, tmp_path, nodes, "--master-port", "29511")
    assert cfg.hosts_source == "Slurm job 7"
    hosts = load_hosts(cfg, {"127.0.0.1"})
    assert [(h.address, h.node, h.gpus) for h in hosts] == [("10.1.0.11", "gpu01", 4), ("10.1.0.12", "gpu02", 4)]
    plan = plan_run(cfg, hosts, local={"127.0.0.1"}, run_dir=tmp_path / "run", job_id="j")
    trainers = [p for p in plan.processes if p.role == "trainer"]
    # Slurm sets the step's CUDA_VISIBLE_DEVICES to the job's GPUs on the node (here 2,3 on gpu02).
    assert all("CUDA_VISIBLE_DEVICES" not in p.env for p in trainers)
    assert all("--nproc-per-node" in p.argv and p.argv[p.argv.index("--nproc-per-node") + 1] == "4"
               for p in trainers)
    from distgnn.launcher.plan import format_plan
    from distgnn.launcher.run import runner_for
    from distgnn.launcher.runner import SrunRunner

    assert "host 1 10.1.0.12 (srun)" in format_plan(plan)
    runner = runner_for(cfg, plan, 1)
    assert isinstance(runner, SrunRunner)
    argv = runner.remote_argv(["true"])
    assert argv[:1] == ["srun"] and "--jobid=7" in argv and "--nodelist=gpu02" in argv and "--overlap" in argv


# -- a real Slurm cluster of two emulated hosts ------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_cluster(emu):
    from slurm_cluster import SlurmCluster

    with SlurmCluster(emu, emu.state_dir / "slurm") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pubmed2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pubmed") / "shards2"
    subprocess.run([BIN / "partition", "--graph", PUBMED, "--num-parts", "2", "--out", out, "--quiet"],
                   check=True, timeout=300)
    return out


def slurm_env(cluster) -> dict[str, str]:
    return {**cluster.env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def run_batch(cluster, argv: list[str], timeout: float = SLURM_TIMEOUT_S) -> int:
    """Submit a batch job and wait for its end; its exit code. Polls every half second:
    `sbatch --wait` doubles its own wait between checks and would add half a minute."""
    done = subprocess.run(["sbatch", "--parsable", *argv], env=slurm_env(cluster), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], env=cluster.env, capture_output=True,
                               text=True, timeout=30).stdout
        fields = dict(field.split("=", 1) for field in shown.split() if "=" in field)
        if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return int(fields["ExitCode"].split(":")[0])
        time.sleep(0.5)
    raise AssertionError(f"batch job {job} still running after {timeout:.0f} s")


def steps_left(cluster) -> list[str]:
    done = subprocess.run(["squeue", "-h", "-s", "-o", "%i %j"], env=cluster.env, capture_output=True, text=True,
                          timeout=30)
    return [line for line in done.stdout.splitlines() if line.strip() and not line.split()[0].endswith(".extern")]


@pytest.mark.netns
def test_launch_in_a_salloc_allocation_trains_on_both_nodes_through_srun(tmp_path, pubmed2, slurm_cluster):
    """No --hosts, no ssh: the nodes, their addresses and GPU counts come from the allocation;
    each node's part is copied to it with srun (--stage-shards) and its processes start with srun."""
    ws = tmp_path / "ws"
    argv = ["salloc", "--nodes=2", "--quiet", *LAUNCH, "--shards", str(pubmed2), "--stage-shards",
            "--workspace", str(ws), "--master-port", str(free_port()), "--metrics-port", "auto",
            "--metrics-linger", "0", "--stop-grace", "5", "--", "train", *TRAIN, "--predict-out", str(tmp_path / "pred")]
    done = subprocess.run(argv, env=slurm_env(slurm_cluster), capture_output=True, text=True,
                          timeout=SLURM_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = only_run(ws)
    plan = json.loads((run / "plan.json").read_text())
    assert [h["node"] for h in plan["hosts"]] == slurm_cluster.nodes
    assert [h["address"] for h in plan["hosts"]] == [h.address for h in slurm_cluster.emu.hosts]
    assert (run / "shards" / "parts" / "part-00001.json").is_file()  # staged through srun
    logs = runlog.read_run(run)
    assert len(logs) == 2 and all(log.summary is not None for log in logs)
    assert logs[0].summary.test_acc > 0.5, logs[0].summary  # chance on PubMed is 0.41
    # every process served its /metrics on its node's address, as over ssh
    for i, host in enumerate(slurm_cluster.emu.hosts):
        for role in ("server", "trainer"):
            assert f"[{host.address} {role} {i}] distgnn-metrics: serving role={role} rank={i} addr={host.address}" \
                in done.stdout, done.stdout[-3000:]
    assert wait_gone(run) == []
    assert steps_left(slurm_cluster) == []


@pytest.mark.netns
def test_sbatch_script_partitions_and_launches(tmp_path, slurm_cluster):
    """deploy/slurm/distgnn.sbatch, submitted with the real sbatch: it runs on the first node
    (an emulated host), partitions PubMed into one part per node and launches there."""
    ws = tmp_path / "ws"
    out = tmp_path / "job.out"
    code = run_batch(slurm_cluster, [
        "--nodes=2", f"--output={out}", f"--chdir={tmp_path}", str(REPO / "deploy" / "slurm" / "distgnn.sbatch"),
        "--graph", str(PUBMED), "--workspace", str(ws), "--metrics-port", "0", "--stop-grace", "5",
        "--", "train", *TRAIN, "--epochs", "2"])
    log = out.read_text() if out.exists() else "(no job output)"
    assert code == 0, log[-4000:]
    assert "partitioning" in log and "into 2 parts" in log, log[-3000:]
    assert "succeeded" in log, log[-3000:]
    assert (ws / "shards" / "pubmed-2parts" / "manifest.json").exists()
    run = only_run(ws)
    plan = json.loads((run / "plan.json").read_text())
    runners = ["local" if p["local"] else "srun" for p in plan["processes"] if p["role"] == "trainer"]
    assert runners == ["local", "srun"]  # the batch script runs on the first node
    assert wait_gone(run) == []


@pytest.mark.netns
def test_sbatch_script_bad_input_is_one_line(tmp_path, slurm_cluster):
    out = tmp_path / "job.out"
    code = run_batch(slurm_cluster, ["--nodes=1", f"--output={out}", f"--chdir={tmp_path}",
                                     str(REPO / "deploy" / "slurm" / "distgnn.sbatch"), "--graph", str(PUBMED)])
    assert code == 2
    assert out.read_text().strip() == "distgnn.sbatch: error: missing '-- train [train options]' after the " \
                                      "script's options"


@pytest.mark.netns
def test_sigkill_of_launch_under_slurm_leaves_no_process_or_step(tmp_path, pubmed2, slurm_cluster):
    """The launcher dies without a word: its srun clients die with it (the reaper), every
    remote step's stdin closes, remote_exec stops its process group, and Slurm ends the steps."""
    ws = tmp_path / "ws"
    argv = ["salloc", "--nodes=2", "--quiet", *LAUNCH, "--shards", str(pubmed2), "--workspace", str(ws),
            "--master-port", str(free_port()), "--metrics-port", "0", "--stop-grace", "5",
            "--", "train", *TRAIN, "--epochs", "200", "--log-every", "1"]
    proc = subprocess.Popen(argv, env=slurm_env(slurm_cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:
            runs = list((ws / "runs").glob("*")) if (ws / "runs").exists() else []
            if runs and any(runlog.read_rank_log(p).steps for p in (runs[0] / "logs").glob("rank-*.jsonl")):
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None, "no training steps within 120 s"
        launcher = next(p for p in _children(proc.pid) if "distgnn.launcher.cli" in " ".join(p.cmdline()))
        launcher.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert wait_gone(run, timeout=30) == [], leftovers(run)
        deadline = time.monotonic() + 30
        while steps_left(slurm_cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert steps_left(slurm_cluster) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _children(pid: int):
    import psutil

    return psutil.Process(pid).children(recursive=True)
