"""Hosts from a Slurm allocation, and starting processes on them with `srun`.

Inside an allocation (`salloc`, `sbatch`), Slurm already knows every node, its address and
the GPUs the job holds there, and `srun` starts a process on any of them without sshd or
keys. The allocation is read with Slurm's own `scontrol` (it expands hostlists such as
`gpu[01-04,07]` exactly as Slurm does). Parsing is pure; the functions that call
`scontrol` take the runner of commands as an argument so they can be exercised without a
cluster.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping

from distgnn.errors import InputError

HOSTS_KEYWORD = "slurm"
"""`launch --hosts slurm`: the hosts are the nodes of the current allocation."""
JOB_ENV = "SLURM_JOB_ID"
NODELIST_ENV = "SLURM_JOB_NODELIST"
SCONTROL_TIMEOUT_S = 60.0

Run = Callable[[list[str]], subprocess.CompletedProcess]


@dataclass(frozen=True)
class SlurmNode:
    name: str
    """Slurm's node name (what `srun --nodelist` takes)."""
    address: str
    """NodeAddr: the address Slurm reaches the node at (the node name when none is set)."""
    gpus: int
    """GPUs this job holds on the node (0 when none)."""


def in_allocation(environ: Mapping[str, str]) -> bool:
    return bool(environ.get(JOB_ENV)) and bool(environ.get(NODELIST_ENV))


def _scontrol(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["scontrol", *argv], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise InputError("--hosts slurm: scontrol not found on PATH (Slurm's client commands are needed)") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"--hosts slurm: scontrol {argv[0]} gave no answer in {SCONTROL_TIMEOUT_S:.0f} s") from None


def allocation_nodes(environ: Mapping[str, str], run: Run = _scontrol) -> list[SlurmNode]:
    """The nodes of the allocation `environ` belongs to, in Slurm's order (the batch host first
    when it is the lowest-named, as Slurm orders them)."""
    if not in_allocation(environ):
        raise InputError(
            f"--hosts slurm: not inside a Slurm allocation ({JOB_ENV} and {NODELIST_ENV} are not set); "
            "run launch under salloc or sbatch, or pass an ip_config file"
        )
    job = environ[JOB_ENV]
    names = expand_hostlist(environ[NODELIST_ENV], run)
    addresses = parse_node_addresses(_checked(run(["show", "node", "--oneliner", ",".join(names)]), "show node"))
    gpus = parse_job_gpus(_checked(run(["show", "job", "--details", job]), "show job"), run)
    return [SlurmNode(name, addresses.get(name, name), gpus.get(name, 0)) for name in names]


def expand_hostlist(hostlist: str, run: Run = _scontrol) -> list[str]:
    """`host[0-2],gpu7` -> ['host0', 'host1', 'host2', 'gpu7'] (scontrol show hostnames)."""
    return _checked(run(["show", "hostnames", hostlist]), "show hostnames").split()


def _checked(done: subprocess.CompletedProcess, what: str) -> str:
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise InputError(f"--hosts slurm: scontrol {what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_node_addresses(text: str) -> dict[str, str]:
    """`scontrol show node --oneliner` output -> {NodeName: NodeAddr}."""
    found = {}
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "NodeName" in fields:
            found[fields["NodeName"]] = fields.get("NodeAddr") or fields["NodeName"]
    return found


_GPU_GRES = re.compile(r"gpu(?::[^:(,\s]+)?:(\d+)")


def gres_gpus(gres: str) -> int:
    """GPUs in a GRES string: 'gpu:4(IDX:0-3)', 'gpu:a100:2(IDX:0-1),nic:1' -> 4, 2; '' -> 0."""
    return sum(int(count) for count in _GPU_GRES.findall(gres))


def parse_job_gpus(text: str, run: Run = _scontrol) -> dict[str, int]:
    """`scontrol show job --details` output -> {node: GPUs the job holds there}. Its detail
    lines name nodes as hostlists (`Nodes=host[0-1] CPU_IDs=0-1 Mem=0 GRES=gpu:2(IDX:0-1)`)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "Nodes" in fields and "CPU_IDs" in fields:
            count = gres_gpus(fields.get("GRES", ""))
            for name in expand_hostlist(fields["Nodes"], run):
                found[name] = count
    return found


def srun_argv(job_id: str, node: str, argv: list[str]) -> list[str]:
    """One task on one node of the job, as a step beside the job's other steps.

    --overlap: the servers and trainers of a node are separate steps that share its CPUs
    (and GPUs); without it the second step waits for the first to end. --input=all keeps
    the task's stdin connected to ours, which is how remote_exec learns that we are gone."""
    return ["srun", f"--jobid={job_id}", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--overlap",
            "--input=all", "--quiet", "--cpu-bind=none", "--", *argv]
