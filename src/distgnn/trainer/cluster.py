"""Joining the cluster: checks that need no servers first, then DGL, then torch.distributed.

Order matters: DGL's `initialize` must run before `init_process_group` (DGL-NOTES), and every
input error must be raised before either, because a trainer that dies after connecting leaves
its peers waiting in DGL's exit barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distgnn.errors import InputError, RunFailure
from distgnn.graph.data import MASK_NAMES
from distgnn.trainer.config import TrainConfig


@dataclass
class Cluster:
    g: object
    """dgl.distributed.DistGraph"""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


@dataclass(frozen=True)
class GraphFacts:
    graph_name: str
    num_parts: int
    num_nodes: int
    feat_dim: int
    num_classes: int
    num_train: int
    hosts: tuple[str, ...]
    """Host addresses from the ip_config, in machine order."""


def hosts_and_manifest(ip_config: Path, shards_root: Path):
    """The host list and the shard manifest, checked against each other: host i serves part i."""
    from distgnn.ip_config import parse_ip_config
    from distgnn.partition import shards

    manifest = shards.read_manifest(shards_root)
    hosts = parse_ip_config(ip_config)
    if len(hosts) != manifest.num_parts:
        raise InputError(
            f"{ip_config}: lists {len(hosts)} hosts but {shards_root} has {manifest.num_parts} parts; "
            "DGL serves one part per host"
        )
    return hosts, manifest


def check_inputs(cfg: TrainConfig, world_size: int) -> GraphFacts:
    """Everything about the shards and host list that can be checked before connecting."""
    hosts, manifest = hosts_and_manifest(cfg.ip_config, cfg.shards)
    facts = GraphFacts(
        graph_name=manifest.graph_name,
        num_parts=manifest.num_parts,
        num_nodes=manifest.num_nodes,
        feat_dim=manifest.schema.feat_dim,
        num_classes=manifest.schema.num_classes or 0,
        num_train=sum(part["train_nodes"] for part in manifest.data["parts"]),
        hosts=tuple(h.address for h in hosts),
    )
    check_task_data(cfg.shards, manifest, cfg.task, cfg.node_embedding)
    if cfg.task == "node-classification" and facts.num_train < world_size and not cfg.predict_only:
        raise InputError(
            f"{cfg.shards}: {facts.num_train} training nodes for {world_size} trainers; "
            "every trainer needs at least one (use fewer trainers)"
        )
    return facts


def check_task_data(shards_dir: Path, manifest, task: str, node_embedding: int = 0) -> None:
    """What the task needs of the shards, with the column or file they lack named: node
    features for every task; labels of at least two classes (node classification) or
    targets (node regression), and train/val/test masks; the held-out edges of
    `partition --link-split` (link prediction)."""
    schema = manifest.schema
    name = task.replace("-", " ")
    if schema.feat_dim == 0 and not node_embedding:
        raise InputError(f"{shards_dir}: {name} needs node features: the graph has no 'feat' column "
                         "(learn them instead with --node-embedding DIM)")
    if task == "link-prediction":
        if "link_split" not in manifest.data:
            raise InputError(f"{shards_dir}: link prediction needs held-out edges: partition the graph with "
                             "--link-split (e.g. 0.85,0.05,0.1)")
        return
    if task == "node-regression" and not schema.has_target:
        raise InputError(f"{shards_dir}: node regression needs targets: the graph has no 'target' column "
                         "(float, NaN for no target)")
    if task == "node-classification":
        if not schema.has_label:
            raise InputError(f"{shards_dir}: {name} needs labels: the graph has no 'label' column")
        if (schema.num_classes or 0) < 2:
            why = "no node is labelled (every label is -1)" if not schema.num_classes else "it has only 1 class"
            raise InputError(f"{shards_dir}: {name} needs labels of at least 2 classes in column 'label': {why}")
    missing = [m for m in MASK_NAMES if m not in schema.masks]
    if missing:
        raise InputError(f"{shards_dir}: {name} needs train/val/test masks: the graph has no '{missing[0]}' column")


def host_index() -> int:
    """This trainer's host = its line in ip_config = torchrun's node rank."""
    return int(os.environ.get("GROUP_RANK", "0"))


def pick_device(backend: str) -> tuple[torch.device, str]:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise InputError("--backend nccl: no CUDA device is visible to this trainer")
    device = torch.device("cuda", local_rank) if (cuda and backend == "nccl") else torch.device("cpu")
    return device, backend


def dgl_client_env(cfg: TrainConfig) -> dict[str, str]:
    """The environment DGL reads in `initialize` for a trainer (DGL-NOTES, 'Processes')."""
    return {
        "DGL_DIST_MODE": "distributed",
        "DGL_ROLE": "client",
        "DGL_NUM_SAMPLER": str(cfg.samplers),
        "DGL_NUM_SERVER": str(cfg.servers_per_host),
        "DGL_GROUP_ID": "0",
    }


def interface_of(address: str) -> str | None:
    """The local network interface that holds `address`, if any."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def collective_env(host_address: str) -> dict[str, str]:
    """Pin Gloo and NCCL to the interface of this host's ip_config address.

    Left alone they pick the address the machine's hostname resolves to, which on hosts with
    several NICs (or emulated hosts sharing one hostname) is often not the one peers can reach.
    A user's own GLOO_/NCCL_SOCKET_IFNAME wins.
    """
    name = interface_of(host_address)
    if name is None:
        return {}
    return {k: v for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if k not in os.environ for v in [name]}


def connect(cfg: TrainConfig, facts: GraphFacts) -> Cluster:
    import dgl
    import torch.distributed as dist

    device, backend = pick_device(cfg.backend)
    os.environ.update(dgl_client_env(cfg))
    os.environ.update(collective_env(facts.hosts[host_index()]))
    # A missing server otherwise makes DGL retry for ~51 minutes (DGL-NOTES pitfall 3).
    os.environ.setdefault("DGL_DIST_MAX_TRY_TIMES", "60")
    from distgnn.ip_config import dgl_readable
    from distgnn.trainer import shm

    tag = shm.current()
    shm.install(tag)
    try:
        dgl.distributed.initialize(str(dgl_readable(cfg.ip_config)))
    except dgl.distributed.rpc.DistConnectError:
        tries = os.environ["DGL_DIST_MAX_TRY_TIMES"]
        servers = ", ".join(facts.hosts)
        raise RunFailure(f"cannot reach the graph servers of {cfg.ip_config} ({servers}) after {tries} tries "
                         "3 s apart: start them first (`launch` does), or check the addresses") from None
    from distgnn.trainer.sampler_watch import watch_sampler_pool

    watch_sampler_pool()
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    g = dgl.distributed.DistGraph(shm.graph_name(facts.graph_name, tag))
    return Cluster(
        g=g,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        device=device,
        backend=backend,
    )


def split_nodes(g, mask_name: str) -> torch.Tensor:
    """This trainer's share of the nodes in a mask; even across trainers so DDP steps line up."""
    from distgnn.trainer.split import my_share

    return my_share(g.ndata[mask_name], g.num_nodes(), g.get_partition_book(), "node")
