"""`launch`: start graph servers and trainers on every host of an ip_config, supervise them.

    launch --hosts ip_config.txt --shards DIR [options] -- train [train arguments...]
    launch --hosts slurm --shards DIR [options] -- train [...]    (inside salloc or sbatch)
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from distgnn.cliutil import Parser
from distgnn.errors import InputError
from distgnn.ip_config import parse_ip_config
from distgnn.launcher import slurm
from distgnn.launcher.config import LaunchConfig, parse_env_pairs
from distgnn.launcher.slurm import SlurmNode
from distgnn.metrics import parse_metrics_port
from distgnn.ports import DEFAULT_MASTER_PORT, DEFAULT_METRICS_PORT

PROG = "launch"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        usage="%(prog)s --hosts FILE|slurm --shards DIR [options] -- train [ARGS...]",
        description="Start graph servers and torchrun trainer groups on every host of an ip_config or "
        "a Slurm allocation (this machine directly, others over ssh or srun) and supervise them until they finish.",
    )
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of launch options, with the train options under 'train:' (the flags given "
                        "here win); the run folder keeps the resolved options as config.yaml")
    where = p.add_argument_group("hosts, shards and the run")
    where.add_argument("--hosts", metavar="FILE|slurm",
                       help="ip_config file (one 'address [port] [gpus=N|trainers=N]' per host), or 'slurm': the nodes of the Slurm "
                            "allocation launch runs in, started with srun (the default inside one)")
    where.add_argument("--shards", required=True, type=Path, help="shard folder from `partition`, one part per host")
    where.add_argument("--stage-shards", action="store_true", help="copy each host's own part into its run folder")
    where.add_argument("--workspace", type=Path, default=Path.cwd(),
                       help="folder for runs/ and caches (the same path on every host)")
    where.add_argument("--job-id", help="run name (default: time and a random suffix)")
    where.add_argument("--resume", metavar="JOB_ID",
                       help="continue a failed or interrupted job in its run folder, with the options it ran with "
                            "(its config.yaml; flags given here win) from its newest checkpoint")
    where.add_argument("--python", default=sys.executable, help="Python interpreter on every host")
    where.add_argument("--dry-run", nargs="?", const="text", choices=["text", "json"], help="print the plan only")
    procs = p.add_argument_group("processes on every host")
    per_host = procs.add_mutually_exclusive_group()
    per_host.add_argument("--trainers-per-host", type=int, default=None, help="CPU trainers per host (default 1)")
    per_host.add_argument("--gpus-per-host", type=gpu_count, default=None, metavar="N|auto",
                          help="one trainer per GPU, N GPUs per host, or 'auto': as many as each host has "
                               "(counted there before the start) (default 0: CPU; under Slurm, the GPUs the "
                               "job holds on each node)")
    procs.add_argument("--servers-per-host", type=int, default=1, help="graph servers per host (default 1)")
    procs.add_argument("--samplers", type=int, default=0, help="sampler processes per trainer (default 0)")
    procs.add_argument("--omp-threads", type=int, default=0, help="OMP_NUM_THREADS (default: cores / processes)")
    procs.add_argument("--allocator", choices=["tcmalloc", "system"], default="tcmalloc",
                       help="memory allocator of servers and trainers (default tcmalloc: libtcmalloc-minimal4 "
                            "on every host; 'system' keeps glibc malloc)")
    procs.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment, repeatable")
    procs.add_argument("--dgl-max-try-times", type=int, default=30, help="trainer connection tries, 3 s apart")
    procs.add_argument("--hang-timeout", type=float, default=300.0, metavar="S",
                       help="end the job when a process sends no heartbeat, or a trainer trains or evaluates no "
                            "batch, for S seconds (default 300; 0: off)")
    net = p.add_argument_group("ports and metrics")
    net.add_argument("--master-port", type=int, default=None,
                     help="rendezvous port on the first host (default: a free port when the first host is this "
                          "machine, so two jobs started together do not collide; "
                          f"{DEFAULT_MASTER_PORT} on a remote one)")
    net.add_argument("--metrics-port", default=str(DEFAULT_METRICS_PORT),
                     help="base /metrics port (default %(default)s), 0 disables, 'auto' takes the next free ones")
    net.add_argument("--metrics-addr", default="0.0.0.0", help="address of the launcher's own /metrics")
    net.add_argument("--metrics-linger", type=float, default=15.0, metavar="SECONDS",
                     help="keep the launcher's /metrics up this long after the run (default 15, one scrape)")
    ssh = p.add_argument_group("remote hosts over ssh (not used under Slurm)")
    ssh.add_argument("--ssh-user", help="login name on remote hosts")
    ssh.add_argument("--ssh-port", type=int, help="sshd port of remote hosts")
    ssh.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                     help="extra ssh argument, repeatable (e.g. --ssh-option=-i --ssh-option=KEY)")
    ssh.add_argument("--connect-timeout", type=int, default=10, help="ssh connect timeout in seconds")
    # For launcher tests: run a tiny worker instead of the real server and trainer, stop faster.
    p.add_argument("--trainer-module", default=None, help=argparse.SUPPRESS)
    p.add_argument("--server-module", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stop-grace", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--server-linger", type=float, default=15.0, help=argparse.SUPPRESS)
    return p


def gpu_count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def split_train_command(argv: list[str], *, train_in_file: bool = False) -> tuple[list[str], list[str]]:
    """Launch options before `--`; after it the train command, whose arguments are kept as
    given. The command may be left out when the --config file has a `train:` section."""
    before = _options_part(argv)
    if "-h" in before or "--help" in before:
        build_parser().parse_args(["--help"])  # prints the help and exits 0
    if "--" not in argv and train_in_file:
        return argv, []
    if "--" not in argv:
        raise InputError("missing '-- train [ARGS...]' after the launch options")
    split = argv.index("--")
    command = argv[split + 1 :]
    if not command or command[0] != "train":
        got = repr(command[0]) if command else "nothing"
        raise InputError(f"expected 'train' after '--', got {got}")
    return argv[:split], command[1:]


PLACED_TRAIN_OPTIONS = {"shards", "ip-config", "servers-per-host", "samplers", "metrics-port", "metrics-addr",
                        "job-id", "run-dir"}
"""Train options the launcher itself gives every trainer (plan._trainer_group)."""


def check_train_command(ns: argparse.Namespace, train_args: list[str], on_gpu: bool) -> dict:
    """Bad train options end the launch here, in a second, with the flag named: found by
    the trainers they would cost a graph server and torchrun start-up first. Returns the
    train options as resolved (for the run folder's config.yaml)."""
    from distgnn import configfile
    from distgnn.trainer.config import build_parser as train_parser
    from distgnn.trainer.config import check_train_args

    given = [*train_args]
    # what the launcher itself adds to every trainer's command (plan._trainer_group)
    placed = ["--shards", str(ns.shards), "--ip-config", str(ns.hosts or "ip_config.txt")]
    python_path = parse_env_pairs(ns.env).get("PYTHONPATH")  # where the trainers import --model from
    try:
        train = check_train_args([*placed, *given], on_gpu=on_gpu, python_path=python_path)
    except InputError as err:
        raise InputError(f"train options: {err}") from None
    parser = train_parser()
    resolved = configfile.resolved(parser.parse_args([*placed, *given]), parser,
                                   skip=PLACED_TRAIN_OPTIONS | {"resume"})
    from distgnn.partition import shards
    from distgnn.trainer.cluster import check_task_data

    try:
        manifest = shards.read_manifest(ns.shards)
    except (InputError, OSError):
        return resolved  # the plan reads the manifest again and reports what is wrong with it
    check_task_data(ns.shards, manifest, train.task, train.node_embedding)
    return resolved


def read_config_file(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launch options, train arguments) with a --config file's options placed before the
    command line's, and any --config of the train command expanded, so that the trainers
    on every host get plain flags and need no copy of the file."""
    from distgnn import configfile
    from distgnn.trainer.config import build_parser as train_parser

    path, argv = configfile.take_config_flag(argv)
    job, workspace = resume_options(argv)
    if job is not None:
        if path is not None:
            raise InputError("--resume and --config: give one (a resume runs with the job's own config.yaml)")
        path, argv = resume_config(argv, job, workspace)
    data = configfile.load(path) if path is not None else {}
    source = f"{configfile.FLAG} {path}"
    train_section = data.pop(configfile.TRAIN_SECTION, None)
    if train_section is not None and not isinstance(train_section, dict):
        raise InputError(f"{source}: train: expected a mapping of train options")
    options, train_args = split_train_command(argv, train_in_file=train_section is not None)
    file_options = configfile.to_argv(data, build_parser(), source)
    file_train = configfile.to_argv(train_section or {}, train_parser(), f"{source}: train")
    train_args = configfile.expand(file_train + train_args, train_parser())
    if job is not None and "--resume" not in train_args:
        train_args.append("--resume")
    return file_options + options, train_args


def _options_part(argv: list[str]) -> list[str]:
    return argv[:argv.index("--")] if "--" in argv else argv


def resume_options(argv: list[str]) -> tuple[str | None, Path]:
    """--resume and --workspace, read before the rest: a resume takes its options from the
    job's run folder, which these two name."""
    pre = Parser(prog=PROG, add_help=False, allow_abbrev=False)  # usage errors: one line, exit 2
    pre.add_argument("--resume")
    pre.add_argument("--workspace", type=Path, default=Path.cwd())
    known, _ = pre.parse_known_args(_options_part(argv))
    return known.resume, known.workspace


def resume_config(argv: list[str], job: str, workspace: Path) -> tuple[Path, list[str]]:
    """The run folder's config.yaml as the --config of a resume, and argv with the job's id."""
    from distgnn import configfile
    from distgnn.launcher import rundir

    run = rundir.run_dir(workspace.absolute(), job)
    path = run / configfile.RESOLVED_NAME
    if not run.is_dir():
        raise InputError(f"--resume {job}: no run folder {run} (see --workspace)")
    if not path.is_file():
        raise InputError(f"--resume {job}: {run} has no {configfile.RESOLVED_NAME} (the job ran with an older launch)")
    status = rundir.read_status(run).get("status") if (run / "status.json").is_file() else None
    if status == "succeeded":
        raise InputError(f"--resume {job}: the job succeeded; there is nothing to resume")
    return path, ["--job-id", job, *argv]


def hosts_from_args(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path | None, list[SlurmNode] | None]:
    """--hosts FILE, or the allocation's nodes for `--hosts slurm` (also when --hosts is not
    given inside an allocation)."""
    if ns.hosts is not None and ns.hosts != slurm.HOSTS_KEYWORD:
        return Path(ns.hosts).absolute(), None
    if ns.hosts is None and not slurm.in_allocation(environ):
        raise InputError("--hosts: give an ip_config file, or 'slurm' inside a Slurm allocation")
    return None, slurm.allocation_nodes(environ)


def explicit_counts(ns: argparse.Namespace) -> bool:
    return ns.gpus_per_host is not None or ns.trainers_per_host is not None


def slurm_counts(ns: argparse.Namespace, nodes: list[SlurmNode] | None) -> list[SlurmNode] | None:
    """The allocation's nodes, each with the GPUs to train with there: those the job holds,
    unless --gpus-per-host or --trainers-per-host says otherwise for every node."""
    if nodes is None or not explicit_counts(ns):
        return nodes
    return [replace(node, gpus=0) for node in nodes]


def trains_on_gpu(ns: argparse.Namespace, hosts_file: Path | None, nodes: list[SlurmNode] | None) -> bool:
    """Whether any host trains on a GPU: --gpus-per-host, a `gpus=N` host line or Slurm's GPUs."""
    if ns.gpus_per_host:  # a count, or 'auto'
        return True
    if nodes is not None:
        return any(node.gpus for node in nodes)
    try:
        return any(entry.gpus for entry in parse_ip_config(hosts_file))
    except InputError:
        return False  # the plan reads the file again and reports what is wrong with it


def config_from_args(argv: list[str], environ: Mapping[str, str] | None = None) -> LaunchConfig:
    environ = os.environ if environ is None else environ
    options, train_args = read_config_file(argv)
    parser = build_parser()
    ns = parser.parse_args(options)
    hosts_file, nodes = hosts_from_args(ns, environ)
    nodes = slurm_counts(ns, nodes)
    extra = {}
    from distgnn import configfile

    # a run's own identity stays out: the file describes the run, not this attempt of it
    launch_options = configfile.resolved(ns, parser, skip={"resume", "job-id", "dry-run"})
    # paths as absolute ones, so the file means the same from any folder (a resume's)
    launch_options.update(hosts=str(hosts_file) if hosts_file is not None else slurm.HOSTS_KEYWORD,
                          shards=str(ns.shards.absolute()), workspace=str(ns.workspace.absolute()))
    resolved = {**launch_options, configfile.TRAIN_SECTION: {"args": train_args}}
    if ns.trainer_module:
        extra["trainer_module"] = ns.trainer_module
    else:
        resolved[configfile.TRAIN_SECTION] = check_train_command(ns, train_args, trains_on_gpu(ns, hosts_file, nodes))
    train_options = resolved[configfile.TRAIN_SECTION]
    checkpoint_dir = Path(train_options["checkpoint-dir"]) if "checkpoint-dir" in train_options else None
    # (the trainer's own check has refused a resume without --checkpoint-dir)
    if ns.resume is not None and checkpoint_dir is not None and not checkpoint_dir.is_absolute():
        raise InputError(f"--resume {ns.resume}: --checkpoint-dir {checkpoint_dir} is relative; every host must "
                         "find it at one path: give an absolute one")
    collect = [Path(train_options[key]) for key in ("predict-out", "checkpoint-dir") if key in train_options]
    if ns.server_module:
        extra["server_module"] = ns.server_module
    return LaunchConfig(
        hosts_file=hosts_file,
        slurm_nodes=nodes,
        slurm_job_id=environ.get(slurm.JOB_ENV) if nodes is not None else None,
        shards=ns.shards.absolute(),
        train_args=train_args,
        python=ns.python,
        workspace=ns.workspace.absolute(),
        stage_shards=ns.stage_shards,
        trainers_per_host=1 if ns.trainers_per_host is None else ns.trainers_per_host,
        gpus_per_host=ns.gpus_per_host if isinstance(ns.gpus_per_host, int) else 0,
        gpus_auto=ns.gpus_per_host == "auto",
        servers_per_host=ns.servers_per_host,
        samplers=ns.samplers,
        master_port=ns.master_port,
        metrics_port=parse_metrics_port(ns.metrics_port),
        metrics_addr=ns.metrics_addr,
        metrics_linger_s=ns.metrics_linger,
        dgl_max_try_times=ns.dgl_max_try_times,
        omp_threads=ns.omp_threads,
        allocator=ns.allocator,
        env=parse_env_pairs(ns.env),
        ssh_user=ns.ssh_user,
        ssh_port=ns.ssh_port,
        ssh_options=ns.ssh_option,
        connect_timeout_s=ns.connect_timeout,
        job_id=ns.job_id,
        dry_run=ns.dry_run,
        stop_grace_s=ns.stop_grace,
        server_linger_s=ns.server_linger,
        hang_timeout_s=ns.hang_timeout,
        resolved=resolved,
        resume=ns.resume is not None,
        checkpoint_dir=checkpoint_dir,
        collect=[folder for folder in collect if folder.is_absolute()],
        **extra,
    )


def main(argv: list[str] | None = None) -> int:
    from distgnn.launcher.run import launch

    try:
        cfg = config_from_args(sys.argv[1:] if argv is None else argv)
        return launch(cfg)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only before any process started: afterwards SIGINT is handled by the supervisor.
        print(f"{PROG}: interrupted before the run started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
