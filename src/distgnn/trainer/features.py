"""A trainer-side cache of the remote node features its batches need most.

Every input node of a batch is either owned by this host's part (read from shared memory),
or remote: its row comes from another host's graph server over RPC, which costs that
server CPU and the network a round trip per batch. The remote nodes a part's batches touch
most are its halo nodes with the most edges into the part: each such edge is one more way
for neighbour sampling to reach the node from a local seed. Their rows are pulled once, at
start-up, and served from memory afterwards; features do not change during training.

Pure tensor code except `build_cache`, which reads the local partition DGL shares with the
trainer and pulls the rows through the DistTensor.

Measured on 2 emulated hosts sharing 2 cores over a loopback bridge (bench/train.py), a
256 MiB cache made fetch slower, 2.2 against 1.6 s an epoch: there the remote rows cost
little and splitting each batch into cached and fetched rows costs more. Hence `train`
leaves it off unless --feature-cache-mb asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

FILL_CHUNK = 65536
"""Rows pulled per RPC while filling the cache."""


def hottest_halo(inner: torch.Tensor, global_id: torch.Tensor, into_part: torch.Tensor, limit: int) -> torch.Tensor:
    """Global ids of up to `limit` halo nodes, most edges into the part first (ties: lower id).

    inner: bool/uint8 per local node (1: owned by this part); global_id: its global id;
    into_part: its number of edges into this part's nodes. Halo nodes without such an edge
    (reached only by edges out of the part) are never sampled from here and are skipped.
    """
    halo = (inner == 0) & (into_part > 0)
    ids, counts = global_id[halo], into_part[halo]
    if limit <= 0 or ids.numel() == 0:
        return ids[:0]
    # Sort by (count desc, id asc): ids first, then a stable sort on the counts.
    by_id = torch.argsort(ids)
    ids, counts = ids[by_id], counts[by_id]
    order = torch.argsort(counts, descending=True, stable=True)[:limit]
    return ids[order]


@dataclass
class FeatureCache:
    """Rows of some remote nodes, looked up by global id through a dense slot table."""

    slot: torch.Tensor
    """int32 [num_nodes]: row of each global id in `rows`, -1 when not cached (4 bytes a node)."""
    rows: torch.Tensor
    """[cached, feat_dim] features."""

    @classmethod
    def empty(cls, num_nodes: int, feat_dim: int, dtype: torch.dtype = torch.float32) -> FeatureCache:
        return cls(torch.full((num_nodes,), -1, dtype=torch.int32), torch.empty((0, feat_dim), dtype=dtype))

    @classmethod
    def fill(cls, ids: torch.Tensor, num_nodes: int, feat_dim: int,
             fetch: Callable[[torch.Tensor], torch.Tensor]) -> FeatureCache:
        cache = cls.empty(num_nodes, feat_dim)
        if ids.numel() == 0:
            return cache
        chunks = [fetch(ids[i : i + FILL_CHUNK]) for i in range(0, ids.numel(), FILL_CHUNK)]
        cache.rows = torch.cat(chunks).contiguous()
        cache.slot[ids] = torch.arange(ids.numel(), dtype=torch.int32)
        return cache

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size() + self.slot.numel() * 4

    def gather(self, nodes: torch.Tensor, fetch: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Features of `nodes` (cached rows from memory, the rest through `fetch`); and the hit count."""
        if self.size == 0:
            return fetch(nodes), 0
        slot = self.slot[nodes]
        hit = slot >= 0
        hits = int(hit.sum())
        if hits == 0:
            return fetch(nodes), 0
        x = torch.empty((nodes.numel(), self.rows.shape[1]), dtype=self.rows.dtype)
        x[hit] = self.rows[slot[hit].long()]
        miss = ~hit
        if hits < nodes.numel():
            x[miss] = fetch(nodes[miss]).to(self.rows.dtype)
        return x, hits


def build_cache(g, feat, budget_bytes: int, feat_dim: int) -> FeatureCache:
    """Pull the hottest halo nodes' rows of `feat` (a DistTensor), within budget_bytes of rows."""
    import dgl

    num_nodes = int(g.num_nodes())
    limit = budget_bytes // max(1, 4 * feat_dim)
    if limit <= 0:
        return FeatureCache.empty(num_nodes, feat_dim)
    local = g.local_partition
    # Edges into the part: the local graph's edges whose destination is inner (the part owns
    # each node's in-edges); counted per source.
    src, dst = local.edges()
    inner = local.ndata["inner_node"].bool()
    into = torch.bincount(src[inner[dst]], minlength=local.num_nodes())
    ids = hottest_halo(inner, local.ndata[dgl.NID], into, limit)
    return FeatureCache.fill(ids, num_nodes, feat_dim, lambda chunk: feat[chunk])
