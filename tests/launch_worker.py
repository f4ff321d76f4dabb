"""A tiny stand-in for the graph server and the trainer, to test the launcher with real processes.

Run by `launch --server-module launch_worker --trainer-module launch_worker` (tests put this
folder on PYTHONPATH). Server mode (argv has --server-index): listen on the host's DGL
port from the ip_config, print 'server ready', exit 0 once every trainer said bye (as
DGL servers exit when their clients leave). Trainer mode (under torchrun): print its
arguments as JSON, then --fail-rank/--fail-code, --sleep, --print; say bye to every
server and exit 0. Each process writes its pid under $WORKER_PID_DIR when set.

With WORKER_METRICS=1 both modes serve real distgnn metrics (the server_metrics /
trainer_metrics factories, from the --metrics-port/--metrics-addr/--job-id the launcher
passes), so they print the `distgnn-metrics:` lines the launcher builds its targets from.
A trainer with --wait-file waits (at most 60 s) for that file before going on.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from distgnn import metrics
from distgnn.ip_config import parse_ip_config


def _record_pid(role: str, rank: int) -> None:
    folder = os.environ.get("WORKER_PID_DIR")
    if folder:
        (Path(folder) / f"{role}-{rank}-{os.getpid()}.pid").write_text(str(os.getpid()))


def _metrics_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", default="0")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--job-id", default="worker")


def _metrics_on() -> bool:
    return os.environ.get("WORKER_METRICS") == "1"


def serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for flag in ("--ip-config", "--part", "--server-index", "--servers-per-host", "--num-clients"):
        p.add_argument(flag, required=True)
    _metrics_flags(p)
    ns, _ = p.parse_known_args(argv)
    part, index, per_host = int(ns.part), int(ns.server_index), int(ns.servers_per_host)
    rank = part * per_host + index
    _record_pid("server", rank)
    entry = parse_ip_config(ns.ip_config)[part]
    sink = metrics.NULL_SERVER_METRICS
    if _metrics_on():
        sink = metrics.server_metrics(
            metrics.parse_metrics_port(ns.metrics_port), ns.metrics_addr, job=ns.job_id, host=entry.address,
            rank=rank, part=part, server_index=index, servers_per_host=per_host,
        )
        sink.set_up(True)
    try:
        return _serve(ns, entry, rank, index)
    finally:
        sink.close()


def _serve(ns: argparse.Namespace, entry, rank: int, index: int) -> int:
    listener = socket.create_server((entry.address, entry.port + index))
    print(f"server {rank} ready on {entry.address}:{entry.port + index}", flush=True)
    fail = os.environ.get("WORKER_SERVER_FAIL", "")  # "RANK=CODE"
    if fail and int(fail.split("=")[0]) == rank:
        time.sleep(0.5)
        print(f"server {rank} failing on purpose", flush=True)
        return int(fail.split("=")[1])
    for _ in range(int(ns.num_clients)):
        conn, _peer = listener.accept()
        conn.close()
    print(f"server {rank} done", flush=True)
    return 0


def train(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ip-config", required=True)
    p.add_argument("--servers-per-host", type=int, required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-code", type=int, default=3)
    p.add_argument("--print", dest="text", default=None)
    p.add_argument("--wait-file", type=Path, default=None)
    _metrics_flags(p)
    ns, _ = p.parse_known_args(argv)
    rank = int(os.environ["RANK"])
    _record_pid("trainer", rank)
    sink = metrics.NULL_TRAINER_METRICS
    if _metrics_on():
        host_index = int(os.environ["GROUP_RANK"])
        sink = metrics.trainer_metrics(
            metrics.parse_metrics_port(ns.metrics_port), ns.metrics_addr, job=ns.job_id,
            host=parse_ip_config(ns.ip_config)[host_index].address, rank=rank,
            local_rank=int(os.environ["LOCAL_RANK"]), servers_per_host=ns.servers_per_host, part=host_index,
        )
    try:
        return _train(ns, argv, rank)
    finally:
        sink.close()


def _train(ns: argparse.Namespace, argv: list[str], rank: int) -> int:
    info = {"rank": rank, "local_rank": int(os.environ["LOCAL_RANK"]), "world": int(os.environ["WORLD_SIZE"]),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "echo": os.environ.get("WORKER_ECHO"), "argv": argv}
    print("ARGS " + json.dumps(info), flush=True)
    if ns.text is not None:
        print(ns.text, flush=True)
    if ns.wait_file is not None:
        deadline = time.monotonic() + 60
        while not ns.wait_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if rank == ns.fail_rank:
        print(f"trainer {rank} failing on purpose with {ns.fail_code}", flush=True)
        return ns.fail_code
    time.sleep(ns.sleep)
    for entry in parse_ip_config(ns.ip_config):
        for k in range(ns.servers_per_host):
            _say_bye(entry.address, entry.port + k)
    print(f"trainer {rank} done", flush=True)
    return 0


def _say_bye(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    argv = sys.argv[1:]
    return serve(argv) if "--server-index" in argv else train(argv)


if __name__ == "__main__":
    sys.exit(main())
