"""A real Slurm cluster for the tests: Debian's slurmctld on this machine and one slurmd
per emulated host, each a Slurm node named after the host with the host's address.

Everything lives in one state folder: the configuration, the daemons' spool and state,
their logs and pid files. Authentication is Slurm's `auth/none` with `cred/none`: the
cluster exists only on the emulation bridge, for the length of a test session, and needs
no munge key. Process tracking is by process group (`proctrack/pgid`), so no cgroup
set-up is needed. The daemons are stopped, and the state removed, on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from distgnn.emulation import EmulatedHosts

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def slurm_conf(state: Path, controller: str, ctld_port: int, slurmd_port: int,
               nodes: list[tuple[str, str]], cpus: int) -> str:
    """slurm.conf for a controller at `controller` and `nodes` (name, address)."""
    lines = [
        "ClusterName=distgnn",
        f"SlurmctldHost={socket.gethostname().split('.')[0]}({controller})",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/none",
        "CredType=cred/none",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={state}/spool/%n",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd-%n.pid",
        f"SlurmctldLogFile={state}/slurmctld.log",
        f"SlurmdLogFile={state}/slurmd-%n.log",
        "ProctrackType=proctrack/pgid",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin",
        "MpiDefault=none",
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        # A node that went away is noticed within seconds, not the default 5 minutes.
        "SlurmdTimeout=30",
        "KillWait=5",
    ]
    lines += [f"NodeName={name} NodeAddr={addr} CPUs={cpus} State=UNKNOWN" for name, addr in nodes]
    lines.append("PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4")
    return "\n".join(lines) + "\n"


def cgroup_mounts_script() -> str:
    """Shell commands that mount this machine's cgroup hierarchies (v1, v2 or both, as
    /proc/mounts lists them) at the same places in another mount namespace."""
    steps = ["set -e"]
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, point, kind, options, *_ = line.split()
        if not point.startswith("/sys/fs/cgroup"):
            continue
        if kind == "tmpfs" and point == "/sys/fs/cgroup":
            steps.append("mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup")
        elif kind in ("cgroup", "cgroup2"):
            wanted = ",".join(o for o in options.split(",") if o not in ("rw", "relatime", "nosuid", "nodev", "noexec"))
            steps.append(f"mkdir -p {point} && mount -t {kind} {'-o ' + wanted if wanted else ''} {kind} {point}")
    return "; ".join(steps)


class SlurmCluster:
    """slurmctld on the emulation bridge, slurmd inside every emulated host."""

    def __init__(self, emu: EmulatedHosts, state: Path) -> None:
        self.emu = emu
        self.state = state
        self.conf = state / "slurm.conf"
        self.nodes = [h.name for h in emu.hosts]
        self._daemons: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm's commands (srun, salloc, sbatch, scontrol) against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> "SlurmCluster":
        for tool in (SLURMCTLD, SLURMD, shutil.which("srun")):
            if tool is None or not os.path.exists(tool):
                raise RuntimeError("Slurm is not installed (Debian: slurmctld slurmd slurm-client); "
                                   "`make test` installs it")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "ctld").mkdir(exist_ok=True)
        controller = self.emu.gateway
        nodes = [(h.name, h.address) for h in self.emu.hosts]
        self.conf.write_text(slurm_conf(self.state, controller, _free_port(controller), 6818, nodes,
                                        cpus=os.cpu_count() or 1))
        self._daemons.append(subprocess.Popen(
            [SLURMCTLD, "-D", "-i", "-f", str(self.conf)], env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.state / "slurmctld.err", "wb"), start_new_session=True))
        for i, host in enumerate(self.emu.hosts):
            (self.state / "spool" / host.name).mkdir(parents=True, exist_ok=True)
            # slurmd reads the cgroup tree at start even with pgid tracking; `ip netns exec`
            # gave the host a fresh /sys without it. This machine's tree is mounted again
            # there, inside the host's own mount namespace only.
            self.emu.run(i, ["sh", "-c", cgroup_mounts_script()], timeout=15, check=True)
            self._daemons.append(subprocess.Popen(
                [*self.emu.enter_argv(i), SLURMD, "-D", "-N", host.name, "-f", str(self.conf)], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.state / f"slurmd-{host.name}.err", "wb"), start_new_session=True))
        self.wait_idle()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until every node reports idle to the controller."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self._daemons:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Slurm daemon exited ({proc.args[0]}, {proc.returncode}); "
                                       f"logs in {self.state}: {self.log_tail()}")
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True,
                                  text=True, timeout=30)
            last = done.stdout.strip() or done.stderr.strip()
            states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
            if len(states) == len(self.nodes) and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes not idle after {timeout:.0f} s: {last}; {self.log_tail()}")

    def log_tail(self) -> str:
        tails = []
        for log in sorted(self.state.glob("*.log")) + sorted(self.state.glob("*.err")):
            text = log.read_text(errors="replace").strip().splitlines()
            if text:
                tails.append(f"{log.name}: {text[-1]}")
        return "; ".join(tails)

    def close(self) -> None:
        for proc in reversed(self._daemons):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self._daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._daemons.clear()
