"""A graph server for one part: materialise DGL's files from the host's own shard, then serve.

Run as `python -m distgnn.trainer.server ...` (the launcher does). The server blocks until every
trainer has disconnected and the first trainer sends DGL's shutdown request.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from distgnn.errors import InputError
from distgnn.ports import DEFAULT_METRICS_PORT


@dataclass(kw_only=True)
class ServerConfig:
    shards: Path
    part: int
    ip_config: Path
    servers_per_host: int
    server_index: int
    """0 is the main server of the host (it loads the part); others are DGL's backup servers."""
    num_clients: int
    """Every DGL client of the run: trainers x (1 + samplers) x hosts. A wrong count hangs DGL forever."""
    cache_dir: Path
    metrics_port: int | str = DEFAULT_METRICS_PORT
    metrics_addr: str = "0.0.0.0"
    job_id: str = "distgnn"

    def __post_init__(self) -> None:
        if self.part < 0:
            raise InputError(f"--part {self.part}: must be at least 0")
        if self.servers_per_host < 1:
            raise InputError(f"--servers-per-host {self.servers_per_host}: must be at least 1")
        if not 0 <= self.server_index < self.servers_per_host:
            raise InputError(
                f"--server-index {self.server_index}: must be in [0, {self.servers_per_host}) (--servers-per-host)"
            )
        if self.num_clients < 1:
            raise InputError(f"--num-clients {self.num_clients}: must be at least 1")

    @property
    def dgl_server_id(self) -> int:
        # DGL numbers servers globally, machine-major; machine i of ip_config serves part i.
        return self.part * self.servers_per_host + self.server_index


def config_from_args(argv: list[str] | None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="distgnn-server", description="Serve one graph part to the trainers.")
    p.add_argument("--shards", required=True, type=Path)
    p.add_argument("--part", required=True, type=int)
    p.add_argument("--ip-config", required=True, type=Path)
    p.add_argument("--servers-per-host", type=int, default=1)
    p.add_argument("--server-index", type=int, default=0)
    p.add_argument("--num-clients", required=True, type=int)
    p.add_argument("--cache-dir", required=True, type=Path)
    p.add_argument("--metrics-port", default=str(DEFAULT_METRICS_PORT))
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument("--job-id", default="distgnn")
    ns = p.parse_args(argv)
    from distgnn.metrics import parse_metrics_port

    return ServerConfig(
        shards=ns.shards,
        part=ns.part,
        ip_config=ns.ip_config,
        servers_per_host=ns.servers_per_host,
        server_index=ns.server_index,
        num_clients=ns.num_clients,
        cache_dir=ns.cache_dir,
        metrics_port=parse_metrics_port(ns.metrics_port),
        metrics_addr=ns.metrics_addr,
        job_id=ns.job_id,
    )


def prepare_part(cfg: ServerConfig) -> tuple[Path, str]:
    """Check the shard against the host list; return the DGL partition config to serve and
    this host's address (its label in metrics)."""
    from distgnn.partition import shards
    from distgnn.partition.to_dgl import cached_materialize
    from distgnn.trainer.cluster import hosts_and_manifest

    hosts, manifest = hosts_and_manifest(cfg.ip_config, cfg.shards)
    if cfg.part >= manifest.num_parts:
        raise InputError(f"--part {cfg.part}: {cfg.shards} has only {manifest.num_parts} parts")
    return cached_materialize(shards.part_ref(cfg.shards, cfg.part), cfg.cache_dir), hosts[cfg.part].address


def _partition_size(part_config: Path, part: int) -> dict:
    """Sizes of the served part, from the DGL files it was materialised into."""
    import json

    config = json.loads(part_config.read_text())
    files = config[f"part-{part}"]
    size = sum((part_config.parent / rel).stat().st_size for rel in files.values())
    lo, hi = config["node_map"]["_N"][part]
    elo, ehi = config["edge_map"]["_N:_E:_N"][part]
    return {"nodes": hi - lo, "edges": ehi - elo, "size_bytes": size}


def serve(cfg: ServerConfig, part_config: Path, host: str) -> None:
    from dgl.distributed import rpc
    from dgl.distributed.dist_graph import DistGraphServer

    from distgnn import metrics
    from distgnn.ip_config import dgl_readable
    from distgnn.trainer import local_sampling, shm

    tag = shm.current()
    if tag:
        shm.install(tag)
        lease = shm.hold(tag)
        swept = shm.sweep(keep=tag)
        if swept:
            print(f"distgnn-server: removed the /dev/shm segments of {len(swept)} dead job(s): {', '.join(swept)}",
                  flush=True)
        part_config = shm.job_config(part_config, tag, cfg.cache_dir / "jobs", cfg.part)
    sink = metrics.server_metrics(
        cfg.metrics_port, cfg.metrics_addr, job=cfg.job_id, host=host, rank=cfg.dgl_server_id,
        part=cfg.part, server_index=cfg.server_index, servers_per_host=cfg.servers_per_host,
    )
    rpc.reset()
    server = DistGraphServer(
        cfg.dgl_server_id,
        str(dgl_readable(cfg.ip_config)),
        cfg.servers_per_host,
        cfg.num_clients,
        str(part_config),
        graph_format=["csc"],
    )
    halo = int((server.client_g.ndata["inner_node"] == 0).sum()) if server.client_g is not None else 0
    # Other hosts' sampling requests for this part run here; backup servers hold no graph.
    if server.client_g is not None and not local_sampling.install(server.client_g, server.gpb):
        print(f"distgnn-server: part {cfg.part}: sampling with DGL's own id translation (the part graph is not "
              "in distgnn's layout, or DGL's sampling internals differ from 2.1's)", flush=True)
    sink.partition(halo_nodes=halo, **_partition_size(part_config, cfg.part))
    sink.set_up(True)
    from distgnn import heartbeat

    heartbeat.start("server", cfg.dgl_server_id)
    try:
        server.start()
    finally:
        sink.set_up(False)
        sink.close()
        if tag:
            shm.release(tag, lease)
            part_config.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        part_config, host = prepare_part(cfg)
    except InputError as err:
        print(f"distgnn-server: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a shard or cache file that cannot be read or written
        print(f"distgnn-server: error: {err.filename or 'a shard file'}: {err.strerror or err}", file=sys.stderr)
        return 2
    serve(cfg, part_config, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
