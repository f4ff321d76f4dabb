"""The launch configuration: every user choice of one `launch` call, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from distgnn.errors import InputError
from distgnn.launcher.slurm import SlurmNode
from distgnn.ports import DEFAULT_MASTER_PORT, DEFAULT_METRICS_PORT

TCMALLOC = "libtcmalloc_minimal.so.4"
"""The allocator `--allocator tcmalloc` preloads, by soname (each host's loader finds it)."""
ALLOCATORS = ("tcmalloc", "system")
DEFAULT_TRAINER_MODULE = "distgnn.trainer.cli"
DEFAULT_SERVER_MODULE = "distgnn.trainer.server"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(kw_only=True)
class LaunchConfig:
    """One launch: which hosts, how many processes per host, and the train command."""

    hosts_file: Path | None
    """ip_config file: one line per host, `address [port]`; host i serves shard part i.
    None: the hosts are `slurm_nodes`."""
    train_args: list[str]
    """Arguments after `-- train`, passed to every trainer untouched."""
    python: str
    """Python interpreter used on every host (same path everywhere, like the venv of this launcher)."""
    workspace: Path
    """Folder (same path on every host) holding runs/<job-id>/ and the servers' DGL cache."""
    shards: Path
    """Shard folder from `partition` (manifest.json + part-NNNNN folders), one part per host."""
    stage_shards: bool = False
    """Copy each host's own part into its run folder instead of reading a shared path."""
    trainers_per_host: int = 1
    """CPU trainers per host (ignored with gpus_per_host, which sets one trainer per GPU)."""
    gpus_per_host: int = 0
    """Trainers per host, one per GPU; 0 trains on CPU."""
    gpus_auto: bool = False
    """--gpus-per-host auto: every host trains with the GPUs it has, counted before the start."""
    servers_per_host: int = 1
    """Graph servers per host (server 0 loads the part, the others are DGL backup servers)."""
    samplers: int = 0
    """Sampler processes per trainer (each is one more DGL client)."""
    master_port: int | None = DEFAULT_MASTER_PORT
    """torch.distributed rendezvous port on the first host; None: a free one, picked by
    `run.make_plan` when the first host is this machine (DEFAULT_MASTER_PORT otherwise)."""
    metrics_port: int | str = DEFAULT_METRICS_PORT
    """Base of the per-process /metrics ports (distgnn.ports.metrics_port; the launcher's own
    is the base); 0 disables metrics; 'auto': each process takes the next free port."""
    metrics_addr: str = "0.0.0.0"
    """Address the launcher's own /metrics binds to (processes bind their ip_config address)."""
    metrics_linger_s: float = 15.0
    """After the run, how long the launcher keeps /metrics up so a scrape sees the final state."""
    dgl_max_try_times: int = 30
    """DGL_DIST_MAX_TRY_TIMES: connection attempts (3 s apart) before a trainer gives up on a server."""
    omp_threads: int = 0
    """OMP_NUM_THREADS of every process; 0 splits this machine's cores among a host's processes."""
    allocator: str = "tcmalloc"
    """Memory allocator of servers and trainers: 'tcmalloc' preloads TCMALLOC, 'system' keeps glibc's.
    Measured +7-10% seeds/s for our trainer and for DGL's example alike (bench/train.py): a
    step allocates and frees tensors of tens of MB, which glibc maps and unmaps each time."""
    slurm_nodes: list[SlurmNode] | None = None
    """The nodes of the Slurm allocation launch runs in (`--hosts slurm`), in Slurm's order;
    processes on them start with srun."""
    slurm_job_id: str | None = None
    """The allocation's job id (srun --jobid)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every process; applied last, so it can override the launcher's defaults."""
    ssh_user: str | None = None
    """Login name on remote hosts (ssh -l); None uses ssh's own default."""
    ssh_port: int | None = None
    """sshd port of remote hosts (ssh -p); None uses ssh's own default."""
    ssh_options: list[str] = field(default_factory=list)
    """Extra ssh arguments, e.g. ['-i', 'key', '-o', 'UserKnownHostsFile=known_hosts']."""
    connect_timeout_s: int = 10
    """ssh ConnectTimeout, so an unreachable host fails fast."""
    job_id: str | None = None
    """Run name (folder runs/<job-id>); None makes one from the time."""
    dry_run: str | None = None
    """None runs; 'text' or 'json' only prints the plan."""
    stop_grace_s: float = 10.0
    """Seconds between SIGTERM and SIGKILL when stopping processes."""
    server_linger_s: float = 15.0
    """After the trainers succeed, how long servers may take to exit on their own."""
    hang_timeout_s: float = 300.0
    """A process silent (no heartbeat), or a trainer without a batch, for this long ends the
    job as hung; 0 turns the watch off."""
    trainer_module: str = DEFAULT_TRAINER_MODULE
    """Module torchrun runs on every trainer (replaceable for launcher tests)."""
    server_module: str = DEFAULT_SERVER_MODULE
    """Module run as graph server (replaceable for launcher tests)."""
    resume: bool = False
    """`launch --resume JOB_ID`: a further attempt of an existing job, in its own run folder."""
    checkpoint_dir: Path | None = None
    """The train command's --checkpoint-dir (other hosts get its newest checkpoint on a resume)."""
    collect: list[Path] = field(default_factory=list)
    """Folders the train command writes on every host (--predict-out, --checkpoint-dir), copied
    back to this machine when the run ends."""
    resolved: dict = field(default_factory=dict)
    """Every option as resolved from the command line and --config (written to the run
    folder as config.yaml, a valid --config file for the same run)."""

    def __post_init__(self) -> None:
        if (self.hosts_file is None) == (self.slurm_nodes is None):
            raise InputError("--hosts: give an ip_config file, or 'slurm' inside a Slurm allocation")
        if self.slurm_nodes is not None and not self.slurm_job_id:
            raise InputError("--hosts slurm: the allocation's job id is unknown")
        self._check_counts()
        self._check_ports()
        self._check_names()
        if self.gpus_per_host and self.trainers_per_host not in (1, self.gpus_per_host):
            raise InputError("--trainers-per-host and --gpus-per-host: give one (with GPUs, one trainer per GPU)")
        if self.allocator not in ALLOCATORS:
            raise InputError(f"--allocator {self.allocator!r}: expected one of {', '.join(ALLOCATORS)}")
        if self.dry_run not in (None, "text", "json"):
            raise InputError(f"--dry-run={self.dry_run}: expected --dry-run or --dry-run=json")
        if self.stop_grace_s <= 0 or self.stop_grace_s > 20:
            raise InputError(f"stop grace {self.stop_grace_s}: must be in (0, 20] s so a stop stays under 30 s")
        if self.server_linger_s < 0:
            raise InputError(f"server linger {self.server_linger_s}: must be at least 0")
        if self.hang_timeout_s < 0 or 0 < self.hang_timeout_s < 2:
            raise InputError(f"--hang-timeout {self.hang_timeout_s:g}: must be 0 (off) or at least 2 s")

    @property
    def heartbeat_s(self) -> float:
        """How often each process reports: several beats fit in one timeout."""
        return 0.0 if not self.hang_timeout_s else min(10.0, max(0.5, self.hang_timeout_s / 6))

    def _check_counts(self) -> None:
        for flag, value, low in (
            ("--trainers-per-host", self.trainers_per_host, 1),
            ("--gpus-per-host", self.gpus_per_host, 0),
            ("--servers-per-host", self.servers_per_host, 1),
            ("--samplers", self.samplers, 0),
            ("--dgl-max-try-times", self.dgl_max_try_times, 1),
            ("--omp-threads", self.omp_threads, 0),
            ("--connect-timeout", self.connect_timeout_s, 1),
        ):
            if value < low:
                raise InputError(f"{flag} {value}: must be at least {low}")

    def _check_ports(self) -> None:
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise InputError(f"--master-port {self.master_port}: must be in 1-65535")
        if self.metrics_port != "auto" and not (
            isinstance(self.metrics_port, int) and 0 <= self.metrics_port <= 65535
        ):
            raise InputError(f"--metrics-port {self.metrics_port}: must be in 0-65535 (0 disables metrics) or 'auto'")
        if not self.metrics_addr or any(c.isspace() for c in self.metrics_addr):
            raise InputError(f"--metrics-addr {self.metrics_addr!r}: expected an address such as 0.0.0.0")
        if not 0 <= self.metrics_linger_s <= 300:
            raise InputError(f"--metrics-linger {self.metrics_linger_s}: must be in [0, 300] s")
        if self.ssh_port is not None and not 1 <= self.ssh_port <= 65535:
            raise InputError(f"--ssh-port {self.ssh_port}: must be in 1-65535")

    def _check_names(self) -> None:
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise InputError(f"--env {name}=...: {name!r} is not a valid environment variable name")
        for flag, module in (("--trainer-module", self.trainer_module), ("--server-module", self.server_module)):
            if not _MODULE_NAME.match(module):
                raise InputError(f"{flag} {module!r}: not a Python module name")
        if self.job_id is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.job_id):
            raise InputError(f"--job-id {self.job_id!r}: use letters, digits, '.', '_' and '-' only")

    @property
    def hosts_source(self) -> str:
        """What named the hosts, for messages: the ip_config file or the allocation."""
        return str(self.hosts_file) if self.hosts_file is not None else f"Slurm job {self.slurm_job_id}"

    @property
    def trainers(self) -> int:
        """Trainer processes per host."""
        return self.gpus_per_host or self.trainers_per_host

    @property
    def metrics_on(self) -> bool:
        return self.metrics_port != 0

    @property
    def fixed_metrics_base(self) -> int:
        """The base port when ports are fixed; 0 when metrics are off or ports are 'auto'."""
        return self.metrics_port if isinstance(self.metrics_port, int) else 0


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """`K=V` strings (from --env) into a dict; the value is kept literally, '=' and spaces included."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--env {pair!r}: expected NAME=VALUE")
        if not _ENV_NAME.match(name):
            raise InputError(f"--env {pair!r}: {name!r} is not a valid environment variable name")
        env[name] = value
    return env
