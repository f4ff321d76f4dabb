"""The launch plan: which process runs on which host, with which argv, environment and log.

Pure: no I/O. The runner executes a RunPlan; `--dry-run` prints it; the run folder keeps it.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distgnn.errors import InputError
from distgnn.heartbeat import ENV as HEARTBEAT_ENV
from distgnn.ip_config import HostEntry, is_local
from distgnn.launcher import rundir
from distgnn.launcher.config import LaunchConfig, TCMALLOC
from distgnn.metrics import file_sd_path
from distgnn.trainer import shm
from distgnn.trainer.split import TRAINERS_ENV
from distgnn.ports import metrics_port


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """One process the launcher starts and supervises."""

    host: str
    """Host address, as in the ip_config."""
    host_index: int
    """Line index of the host in the ip_config = machine id = the part it serves."""
    role: str
    """'server' (a DGL graph server) or 'trainer' (one torchrun group of the host)."""
    rank: int
    """Server: DGL's global server id (host_index * S + k). Trainer: torchrun's node rank (= host_index)."""
    argv: list[str]
    env: dict[str, str]
    """Added to the environment the process inherits."""
    log_path: Path
    local: bool
    """True when the host is this machine (started directly, not through ssh)."""
    ports: list[int]
    """Ports the process will listen on; checked free on its host before anything starts."""

    @property
    def label(self) -> str:
        """`host role rank`, the prefix of every streamed line and the name in reports."""
        return f"{self.host} {self.role} {self.rank}"


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """Everything one launch will start, as plain data."""

    job_id: str
    run_dir: Path
    """Run folder, the same path on every host (plan.json, logs, status.json, ip_config.txt)."""
    hosts: list[HostEntry]
    ip_config_path: Path
    """The DGL-readable ip_config (addresses resolved) every process reads, inside run_dir."""
    shards_source: Path
    """The shard folder given on the command line."""
    shards_path: Path
    """Where processes read shards: shards_source, or run_dir/shards with stage_shards."""
    stage_shards: bool
    servers_per_host: int
    trainers_per_host: int
    """--trainers-per-host or --gpus-per-host: the count of hosts whose line gives none."""
    gpus_per_host: int
    samplers: int
    num_clients: int
    """DGL_NUM_CLIENT the servers wait for: every host's trainers x (1 + samplers)."""
    master_addr: str
    master_port: int
    processes: list[ProcessSpec]
    metrics_port: int | str = 0
    """Base /metrics port (the launcher's own), 0 off, 'auto' (ports known only once processes run)."""
    hang_timeout_s: float = 0.0
    """--hang-timeout (0: no liveness watch)."""
    host_trainers: list[int] = field(default_factory=list)
    """Trainers of each host, in host order (hosts may differ: `gpus=N` / `trainers=N` lines)."""
    on_gpu: bool = False
    """The trainers train on GPUs, one each."""
    unresolved: list[str] = field(default_factory=list)
    """Host names a dry run planned with, without looking them up (a real run resolves all)."""

    @property
    def world_size(self) -> int:
        return sum(self.host_trainers)

    def on_host(self, host_index: int) -> list[ProcessSpec]:
        return [p for p in self.processes if p.host_index == host_index]

    def host_ports(self, host_index: int) -> list[int]:
        """Every port a process of this host will listen on (checked free before starting)."""
        return sorted({port for p in self.on_host(host_index) for port in p.ports})

    def host_is_local(self, host_index: int) -> bool:
        return all(p.local for p in self.on_host(host_index))


def plan_run(
    cfg: LaunchConfig,
    hosts: list[HostEntry],
    *,
    local: set[str],
    run_dir: Path,
    job_id: str,
    num_parts: int | None = None,
    gpu_counts: list[int] | None = None,
    cpu_count: int = 1,
    unresolved: list[str] | None = None,
) -> RunPlan:
    """Plan one launch. `local` are this machine's addresses; `num_parts` the shard manifest's
    part count (checked against the hosts); `gpu_counts` each host's GPUs, when queried."""
    if not hosts:
        raise InputError(f"--hosts {cfg.hosts_source}: no host listed")
    if num_parts is not None and num_parts != len(hosts):
        raise InputError(
            f"--shards {cfg.shards}: the manifest has {num_parts} part(s) but --hosts {cfg.hosts_source} "
            f"lists {len(hosts)} host(s); partition into one part per host"
        )
    trainers, on_gpu = host_trainers(cfg, hosts)
    if gpu_counts is not None:
        check_gpus(cfg, hosts, gpu_counts, trainers)
    shards_path = rundir.staged_shards(run_dir) if cfg.stage_shards else cfg.shards
    plan = RunPlan(
        job_id=job_id,
        run_dir=run_dir,
        hosts=list(hosts),
        ip_config_path=rundir.ip_config_path(run_dir),
        shards_source=cfg.shards,
        shards_path=shards_path,
        stage_shards=cfg.stage_shards,
        servers_per_host=cfg.servers_per_host,
        trainers_per_host=cfg.trainers,
        gpus_per_host=cfg.gpus_per_host,
        samplers=cfg.samplers,
        num_clients=sum(trainers) * (1 + cfg.samplers),
        master_addr=hosts[0].address,
        master_port=cfg.master_port,
        processes=[],
        metrics_port=cfg.metrics_port,
        hang_timeout_s=cfg.hang_timeout_s,
        host_trainers=trainers,
        on_gpu=on_gpu,
        unresolved=list(unresolved or []),
    )
    env = _base_env(cfg, cpu_count, trainers)
    if len(set(trainers)) > 1:
        # DGL's node_split assumes as many trainers on every machine; the trainers split by this.
        env[TRAINERS_ENV] = ",".join(map(str, trainers))
    # The job's own /dev/shm names: two jobs of one graph on a host would open each other's.
    env[shm.ENV] = shm.tag_for(job_id, run_dir)
    for index, entry in enumerate(hosts):
        is_here = is_local(entry, local)
        for k in range(cfg.servers_per_host):
            plan.processes.append(_server(cfg, plan, entry, index, k, is_here, env))
        plan.processes.append(_trainer_group(cfg, plan, entry, index, is_here, env))
    return plan


def host_trainers(cfg: LaunchConfig, hosts: list[HostEntry]) -> tuple[list[int], bool]:
    """Each host's trainer count, and whether the job trains on GPUs. A host's own line
    (`gpus=N`, `trainers=N`, or Slurm's count of the GPUs the job holds on the node) wins over
    --gpus-per-host / --trainers-per-host. A job trains on GPUs on every host or on none:
    DDP's NCCL backend cannot take a CPU rank, and a host without GPUs is never picked for
    CPU training unless the user says so."""
    on_gpu = cfg.gpus_per_host > 0 or any(entry.gpus for entry in hosts)
    counts = []
    for entry in hosts:
        where = f"host {entry.address} ({entry.where(cfg.hosts_source)})"
        if on_gpu and entry.trainers is not None:
            raise InputError(f"{where}: trainers={entry.trainers} asks for CPU trainers, but this job trains on "
                             "GPUs (gpus=N or --gpus-per-host); a job trains on GPUs on every host or on none")
        if on_gpu:
            count = entry.gpus if entry.gpus is not None else cfg.gpus_per_host
            if count < 1:
                raise InputError(f"{where}: no GPU count for a job that trains on GPUs; give the host gpus=N, "
                                 "or pass --gpus-per-host N for the hosts that give none")
        else:
            count = entry.trainers if entry.trainers is not None else cfg.trainers_per_host
        counts.append(count)
    return counts, on_gpu


def check_gpus(cfg: LaunchConfig, hosts: list[HostEntry], gpu_counts: list[int], wanted: list[int]) -> None:
    """Reject a host asked to train with more GPUs than it has."""
    for entry, count, want in zip(hosts, gpu_counts, wanted, strict=True):
        if count < want:
            asked = f"gpus={want}" if entry.gpus is not None else f"--gpus-per-host {want}"
            raise InputError(f"{asked}: host {entry.address} ({entry.where(cfg.hosts_source)}) has {count} GPU(s)")


def _base_env(cfg: LaunchConfig, cpu_count: int, trainers: list[int]) -> dict[str, str]:
    per_host = cfg.servers_per_host + max(trainers)
    threads = cfg.omp_threads or max(1, cpu_count // per_host)
    env = {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        # DGL's default (1024 tries, 3 s apart) keeps a trainer waiting ~51 min for a dead server.
        "DGL_DIST_MAX_TRY_TIMES": str(cfg.dgl_max_try_times),
    }
    if cfg.heartbeat_s:
        env[HEARTBEAT_ENV] = f"{cfg.heartbeat_s:g}"
    if cfg.allocator == "tcmalloc":
        env["LD_PRELOAD"] = TCMALLOC  # the preflight checked every host has it
    return env


def _server(
    cfg: LaunchConfig, plan: RunPlan, entry: HostEntry, index: int, k: int, is_here: bool, env: dict[str, str]
) -> ProcessSpec:
    rank = index * cfg.servers_per_host + k
    argv = [
        cfg.python, "-m", cfg.server_module,
        "--shards", str(plan.shards_path),
        "--part", str(index),
        "--ip-config", str(plan.ip_config_path),
        "--servers-per-host", str(cfg.servers_per_host),
        "--server-index", str(k),
        "--num-clients", str(plan.num_clients),
        "--cache-dir", str(cfg.workspace / "cache"),
        "--metrics-port", str(cfg.metrics_port),
        "--metrics-addr", entry.address,
        "--job-id", plan.job_id,
    ]  # fmt: skip
    ports = [entry.port + k]
    if cfg.fixed_metrics_base:  # with 'auto' only the process knows its port
        ports.append(metrics_port(cfg.fixed_metrics_base, "server", k, cfg.servers_per_host))
    return ProcessSpec(
        host=entry.address,
        host_index=index,
        role="server",
        rank=rank,
        argv=argv,
        env={**env, **cfg.env},
        log_path=rundir.log_path(plan.run_dir, entry.address, "server", rank),
        local=is_here,
        ports=ports,
    )


def _trainer_group(
    cfg: LaunchConfig, plan: RunPlan, entry: HostEntry, index: int, is_here: bool, env: dict[str, str]
) -> ProcessSpec:
    trainers = plan.host_trainers[index]
    argv = [
        cfg.python, "-m", "torch.distributed.run",
        "--nnodes", str(len(plan.hosts)),
        "--node-rank", str(index),
        "--nproc-per-node", str(trainers),
        "--master-addr", plan.master_addr,
        "--master-port", str(cfg.master_port),
        # torchrun checks its workers every 5 s by default: a failure or the end would wait for it.
        "--monitor-interval", "1",
        "--log-dir", str(rundir.torchrun_log_dir(plan.run_dir, entry.address)),
        "-m", cfg.trainer_module,
        "--shards", str(plan.shards_path),
        "--ip-config", str(plan.ip_config_path),
        "--servers-per-host", str(cfg.servers_per_host),
        "--samplers", str(cfg.samplers),
        "--metrics-port", str(cfg.metrics_port),
        "--metrics-addr", entry.address,
        "--job-id", plan.job_id,
        "--run-dir", str(plan.run_dir),
        *cfg.train_args,
    ]  # fmt: skip
    group_env = dict(env)
    # On a Slurm node the step's CUDA_VISIBLE_DEVICES already names the job's GPUs there
    # (the indices need not start at 0); elsewhere one device per local rank.
    if plan.on_gpu and entry.node is None:
        # One device per local rank: the trainer picks cuda:LOCAL_RANK among these.
        group_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(trainers))
    ports = [cfg.master_port] if index == 0 else []
    if cfg.fixed_metrics_base:
        base = cfg.fixed_metrics_base
        ports += [metrics_port(base, "trainer", r, cfg.servers_per_host) for r in range(trainers)]
    return ProcessSpec(
        host=entry.address,
        host_index=index,
        role="trainer",
        rank=index,
        argv=argv,
        env={**group_env, **cfg.env},
        log_path=rundir.log_path(plan.run_dir, entry.address, "trainer", index),
        local=is_here,
        ports=ports,
    )


def plan_to_json(plan: RunPlan) -> dict:
    """The plan as JSON-ready data (what plan.json and --dry-run=json hold)."""
    data = asdict(plan)
    for key in ("run_dir", "ip_config_path", "shards_source", "shards_path"):
        data[key] = str(data[key])
    for proc in data["processes"]:
        proc["log_path"] = str(proc["log_path"])
    return data


def format_plan(plan: RunPlan) -> str:
    """The plan for people: one block per host, one command line per process."""
    if len(set(plan.host_trainers)) == 1:
        trainers = f"{plan.host_trainers[0]} trainer(s)"
    else:
        trainers = f"{'/'.join(map(str, plan.host_trainers))} trainers (host 0/1/...)"
    lines = [
        f"job {plan.job_id}, run folder {plan.run_dir}",
        f"{len(plan.hosts)} host(s); per host {plan.servers_per_host} server(s) and "
        f"{trainers}" + (" (one per GPU)" if plan.on_gpu else " (CPU)")
        + f"; {plan.samplers} sampler(s) per trainer; {plan.num_clients} DGL client(s); world size {plan.world_size}",
        f"rendezvous {plan.master_addr}:{plan.master_port}; shards "
        + (f"{plan.shards_source} staged to {plan.shards_path}" if plan.stage_shards else str(plan.shards_path)),
    ]
    if plan.unresolved:
        lines.append(f"host names not resolved (dry run; a real launch resolves them first): "
                     f"{', '.join(plan.unresolved)}")
    if plan.hang_timeout_s:
        lines.append(f"liveness: a process silent, or a trainer without a batch, for {plan.hang_timeout_s:g} s "
                     "ends the job (--hang-timeout)")
    else:
        lines.append("liveness: no hang watch (--hang-timeout 0)")
    if plan.metrics_port:
        lines.append(f"metrics: base port {plan.metrics_port} (the launcher's), targets {file_sd_path(plan.run_dir)}")
    for index, entry in enumerate(plan.hosts):
        how = "local" if plan.host_is_local(index) else ("srun" if entry.node else "ssh")
        lines.append(f"host {index} {entry.address} ({how}), {plan.host_trainers[index]} trainer(s), "
                     f"ports {', '.join(map(str, plan.host_ports(index)))}")
        for proc in plan.on_host(index):
            lines.append(f"  {proc.role} {proc.rank}  log {proc.log_path}")
            lines.append(f"    env  {' '.join(f'{k}={shlex.quote(v)}' for k, v in sorted(proc.env.items()))}")
            lines.append(f"    argv {shlex.join(proc.argv)}")
    return "\n".join(lines)
