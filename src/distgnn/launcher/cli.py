"""`launch`: start graph servers and trainers on every host of an ip_config, supervise them.

    launch --hosts ip_config.txt --shards DIR [options] -- train [train arguments...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distgnn.cliutil import Parser
from distgnn.errors import InputError
from distgnn.launcher.config import LaunchConfig, parse_env_pairs
from distgnn.metrics import parse_metrics_port
from distgnn.ports import DEFAULT_MASTER_PORT, DEFAULT_METRICS_PORT

PROG = "launch"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        usage="%(prog)s --hosts FILE --shards DIR [options] -- train [ARGS...]",
        description="Start graph servers and torchrun trainer groups on every host of an ip_config "
        "(this machine directly, others over ssh) and supervise them until they finish.",
    )
    p.add_argument("--hosts", required=True, type=Path, help="ip_config file: one 'address [port]' per host")
    p.add_argument("--shards", required=True, type=Path, help="shard folder from `partition`, one part per host")
    p.add_argument("--stage-shards", action="store_true", help="copy each host's own part into its run folder")
    per_host = p.add_mutually_exclusive_group()
    per_host.add_argument("--trainers-per-host", type=int, default=1, help="CPU trainers per host (default 1)")
    per_host.add_argument("--gpus-per-host", type=int, default=0, help="one trainer per GPU, N GPUs per host")
    p.add_argument("--servers-per-host", type=int, default=1, help="graph servers per host (default 1)")
    p.add_argument("--samplers", type=int, default=0, help="sampler processes per trainer (default 0)")
    p.add_argument("--master-port", type=int, default=None,
                   help="rendezvous port on the first host (default: a free port when the first host is this "
                        f"machine, so two jobs started together do not collide; {DEFAULT_MASTER_PORT} on a remote one)")
    p.add_argument("--metrics-port", default=str(DEFAULT_METRICS_PORT),
                   help="base /metrics port (default %(default)s), 0 disables, 'auto' takes the next free ones")
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address of the launcher's own /metrics")
    p.add_argument("--metrics-linger", type=float, default=15.0, metavar="SECONDS",
                   help="keep the launcher's /metrics up this long after the run (default 15, one scrape)")
    p.add_argument("--dgl-max-try-times", type=int, default=30, help="trainer connection tries, 3 s apart")
    p.add_argument("--omp-threads", type=int, default=0, help="OMP_NUM_THREADS (default: cores / processes)")
    p.add_argument("--allocator", choices=["tcmalloc", "system"], default="tcmalloc",
                   help="memory allocator of servers and trainers (default tcmalloc: libtcmalloc-minimal4 "
                        "on every host; 'system' keeps glibc malloc)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment, repeatable")
    p.add_argument("--ssh-user", help="login name on remote hosts")
    p.add_argument("--ssh-port", type=int, help="sshd port of remote hosts")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra ssh argument, repeatable (e.g. --ssh-option=-i --ssh-option=KEY)")
    p.add_argument("--connect-timeout", type=int, default=10, help="ssh connect timeout in seconds")
    p.add_argument("--workspace", type=Path, default=Path.cwd(), help="folder for runs/ and caches (same on all hosts)")
    p.add_argument("--job-id", help="run name (default: time and a random suffix)")
    p.add_argument("--python", default=sys.executable, help="Python interpreter on every host")
    p.add_argument("--dry-run", nargs="?", const="text", choices=["text", "json"], help="print the plan only")
    # For launcher tests: run a tiny worker instead of the real server and trainer, stop faster.
    p.add_argument("--trainer-module", default=None, help=argparse.SUPPRESS)
    p.add_argument("--server-module", default=None, help=argparse.SUPPRESS)
    p.add_argument("--hang-timeout", type=float, default=300.0, metavar="S",
                   help="end the job when a process sends no heartbeat, or a trainer trains or evaluates no "
                        "batch, for S seconds (default 300; 0: off)")
    p.add_argument("--stop-grace", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--server-linger", type=float, default=15.0, help=argparse.SUPPRESS)
    return p


def split_train_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Launch options before `--`; after it the train command, whose arguments are kept as given."""
    before = argv[:argv.index("--")] if "--" in argv else argv
    if "-h" in before or "--help" in before:
        build_parser().parse_args(["--help"])  # prints the help and exits 0
    if "--" not in argv:
        raise InputError("missing '-- train [ARGS...]' after the launch options")
    split = argv.index("--")
    command = argv[split + 1 :]
    if not command or command[0] != "train":
        got = repr(command[0]) if command else "nothing"
        raise InputError(f"expected 'train' after '--', got {got}")
    return argv[:split], command[1:]


def check_train_command(ns: argparse.Namespace, train_args: list[str]) -> None:
    """Bad train options end the launch here, in a second, with the flag named: found by
    the trainers they would cost a graph server and torchrun start-up first."""
    from distgnn.trainer.config import check_train_args

    given = [*train_args]
    # what the launcher itself adds to every trainer's command (plan._trainer_group)
    placed = ["--shards", str(ns.shards), "--ip-config", str(ns.hosts)]
    python_path = parse_env_pairs(ns.env).get("PYTHONPATH")  # where the trainers import --model from
    try:
        train = check_train_args([*placed, *given], on_gpu=ns.gpus_per_host > 0, python_path=python_path)
    except InputError as err:
        raise InputError(f"train options: {err}") from None
    from distgnn.partition import shards
    from distgnn.trainer.cluster import check_task_data

    try:
        manifest = shards.read_manifest(ns.shards)
    except (InputError, OSError):
        return  # the plan reads the manifest again and reports what is wrong with it
    check_task_data(ns.shards, manifest, train.task, train.node_embedding)


def config_from_args(argv: list[str]) -> LaunchConfig:
    options, train_args = split_train_command(argv)
    ns = build_parser().parse_args(options)
    extra = {}
    if ns.trainer_module:
        extra["trainer_module"] = ns.trainer_module
    else:
        check_train_command(ns, train_args)
    if ns.server_module:
        extra["server_module"] = ns.server_module
    return LaunchConfig(
        hosts_file=ns.hosts.absolute(),
        shards=ns.shards.absolute(),
        train_args=train_args,
        python=ns.python,
        workspace=ns.workspace.absolute(),
        stage_shards=ns.stage_shards,
        trainers_per_host=ns.trainers_per_host,
        gpus_per_host=ns.gpus_per_host,
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
