"""Each trainer's share of the nodes (or edges) of a split, so that every trainer takes the
same number of steps.

DGL's `node_split(force_even=True)` gives every partition an even share and every trainer
of a machine an even share of that, so it needs as many trainers on every machine. When
hosts differ (`gpus=N` / `trainers=N` host lines, or Slurm nodes holding different GPU
counts), launch sets TRAINERS_ENV to each host's count and the flagged ids are cut into
one even slice per trainer, in torch rank order. torchrun numbers ranks host by host, and
partitions hold contiguous id ranges, so a trainer's slice lies mostly in its own host's
partition: a host with more trainers also reads some of the next host's ids, remotely.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

TRAINERS_ENV = "DISTGNN_TRAINERS_PER_HOST"
"""Comma-separated trainer count of each host, set by launch only when the hosts differ."""
_BLOCK = 1 << 22
"""Flags read at a time from a DistTensor: the whole mask of a large graph never sits in memory."""


def host_layout(environ: Mapping[str, str] = os.environ) -> list[int] | None:
    text = environ.get(TRAINERS_ENV, "")
    return [int(count) for count in text.split(",")] if text else None


def flagged_ids(flags, length: int) -> torch.Tensor:
    """Ids whose flag is set, in order; `flags` is a tensor or a DistTensor read in blocks."""
    found = [torch.nonzero(torch.as_tensor(flags[start:min(start + _BLOCK, length)]), as_tuple=True)[0] + start
             for start in range(0, length, _BLOCK)]
    return torch.cat(found).to(torch.int64) if found else torch.empty(0, dtype=torch.int64)


def even_slice(ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The rank-th of `world` contiguous slices whose sizes differ by at most one."""
    count = len(ids)
    return ids[count * rank // world: count * (rank + 1) // world]


def my_share(flags, length: int, partition_book, kind: str) -> torch.Tensor:
    """This trainer's share of the ids whose flag is set (`kind` 'node' or 'edge')."""
    import dgl

    layout = host_layout()
    if layout is None:
        split = dgl.distributed.node_split if kind == "node" else dgl.distributed.edge_split
        return split(flags, partition_book, force_even=True)
    import torch.distributed as dist

    world = sum(layout)
    rank = dist.get_rank()
    if dist.get_world_size() != world:
        raise RuntimeError(f"{TRAINERS_ENV}={os.environ[TRAINERS_ENV]} names {world} trainers, but torch's world "
                           f"has {dist.get_world_size()}")
    return even_slice(flagged_ids(flags, length), rank, world)
