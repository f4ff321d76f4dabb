"""A trainer-side cache of the remote node features its batches need most.

Every input node of a batch is either owned by this host's part (read from shared memory),
or remote: its row comes from another host's graph server over RPC, which costs that
server CPU and the network a round trip per batch. The remote nodes a part's batches touch
most are its halo nodes with the most edges into the part: each such edge is one more way
for neighbour sampling to reach the node from a local seed. Their rows are pulled once, at
start-up, and served from memory afterwards; features do not change during training.

Pure tensor code except `build_cache`, which reads the local partition DGL shares with the
trainer and pulls the rows through the DistTensor.

A batch's rows are assembled without DGL's pull where possible: the part's own rows are
read straight from the shared-memory tensor the local graph server holds (which is what
DGL's pull does for them too), cached rows from memory, and only the rest goes through
`fetch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
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
    """Rows of some remote nodes, looked up by global id through a dense slot table.

    Filled at start-up with the hottest halo nodes; while it has room left, every remote row a
    batch still has to fetch is kept too (the features never change during training), so after
    the first epoch the nodes two hops out are served from memory as well. The room is
    reserved with torch.empty: pages the cache never writes cost no memory.
    """

    slot: torch.Tensor
    """int32 [num_nodes]: row of each global id in `rows`, -1 when not cached (4 bytes a node)."""
    rows: torch.Tensor
    """[capacity, feat_dim]: the first `size` rows hold features, the rest is room."""
    size: int = 0
    """Rows in use."""
    local_rows: torch.Tensor | None = None
    """This part's own rows, row i being node local_start + i: the local graph server's
    shared-memory tensor, read in place. None: every uncached row goes through `fetch`."""
    local_start: int = 0

    @classmethod
    def empty(cls, num_nodes: int, feat_dim: int, capacity: int = 0, dtype: torch.dtype = torch.float32) -> FeatureCache:
        return cls(torch.full((num_nodes,), -1, dtype=torch.int32), torch.empty((capacity, feat_dim), dtype=dtype))

    @classmethod
    def fill(cls, ids: torch.Tensor, num_nodes: int, feat_dim: int,
             fetch: Callable[[torch.Tensor], torch.Tensor], capacity: int | None = None) -> FeatureCache:
        """A cache holding the rows of `ids` (pulled FILL_CHUNK at a time), with room for
        `capacity` rows in all (default: just these)."""
        capacity = int(ids.numel()) if capacity is None else int(capacity)
        if capacity < ids.numel():
            raise ValueError(f"a cache of {capacity} rows cannot hold {ids.numel()}")
        cache = cls.empty(num_nodes, feat_dim, capacity)
        for i in range(0, ids.numel(), FILL_CHUNK):
            cache.admit(ids[i : i + FILL_CHUNK], fetch(ids[i : i + FILL_CHUNK]))
        return cache

    def with_local_rows(self, rows: torch.Tensor, start: int) -> FeatureCache:
        if rows.dim() != 2 or rows.shape[1] != self.rows.shape[1]:
            raise ValueError(
                f"local rows of shape {tuple(rows.shape)} do not match cached rows {tuple(self.rows.shape)}"
            )
        return FeatureCache(self.slot, self.rows, self.size, rows, int(start))

    @property
    def capacity(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory in use: the filled rows and the slot table."""
        return self.size * self.rows.shape[1] * self.rows.element_size() + self.slot.numel() * 4

    def admit(self, ids: torch.Tensor, rows: torch.Tensor) -> int:
        """Keep the rows of `ids` (not cached yet) while there is room; returns how many were kept."""
        kept = min(self.capacity - self.size, int(ids.numel()))
        if kept <= 0:
            return 0
        self.rows[self.size : self.size + kept] = rows[:kept]
        self.slot[ids[:kept]] = torch.arange(self.size, self.size + kept, dtype=torch.int32)
        self.size += kept
        return kept

    def gather(self, nodes: torch.Tensor, fetch: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Features of `nodes` (own and cached rows from memory, the rest through `fetch`); and
        the number of cached rows used."""
        if self.capacity == 0:
            return fetch(nodes), 0
        ids = nodes.numpy()
        if self.local_rows is not None:
            offset = ids - self.local_start
            count = self.local_rows.shape[0]
            pending = np.flatnonzero((offset < 0) | (offset >= count))
            # One gather for every position, then the other rows written over theirs: less
            # than splitting the batch by owner first. NumPy's take: 2.4 ms for 75,000 rows of
            # 64 floats against 3.0 ms for torch's index_select.
            own = np.take(self.local_rows.numpy(), np.clip(offset, 0, max(count - 1, 0)), axis=0)
            x = torch.from_numpy(own)
        else:
            pending = np.arange(len(ids))
            x = torch.empty((len(ids), self.rows.shape[1]), dtype=self.rows.dtype)
        slots = self.slot.numpy()[ids[pending]]
        hit = slots >= 0
        hits = int(np.count_nonzero(hit))
        if hits:
            cached = self.rows.index_select(0, torch.from_numpy(slots[hit].astype(np.int64)))
            x.index_copy_(0, torch.from_numpy(pending[hit]), cached)
        missed = torch.from_numpy(pending[~hit])
        if missed.numel():
            # A batch's input nodes are distinct, so each fetched row is admitted once.
            ids = nodes[missed]
            fetched = fetch(ids).to(x.dtype)
            x.index_copy_(0, missed, fetched)
            self.admit(ids, fetched)
        return x, hits


def rows_within(budget_bytes: int, num_nodes: int, feat_dim: int) -> int:
    """Feature rows that fit in budget_bytes beside the slot table (4 bytes a node of the graph)."""
    return max(0, (budget_bytes - 4 * num_nodes) // max(1, 4 * feat_dim))


def build_cache(g, feat, budget_bytes: int, feat_dim: int, own: tuple[int, int]) -> FeatureCache:
    """Pull the hottest halo nodes' rows of `feat` (a DistTensor) that fit in budget_bytes
    with the slot table; empty when the table alone does not fit. `own` is this part's node
    range [start, end) (PartLocality's), whose rows the cache then reads in place."""
    import dgl

    num_nodes = int(g.num_nodes())
    limit = rows_within(budget_bytes, num_nodes, feat_dim)
    if limit == 0:
        return FeatureCache.empty(num_nodes, feat_dim)
    local = g.local_partition
    # Edges into the part: the local graph's edges whose destination is inner (the part owns
    # each node's in-edges); counted per source.
    src, dst = local.edges()
    inner = local.ndata["inner_node"].bool()
    into = torch.bincount(src[inner[dst]], minlength=local.num_nodes())
    ids = hottest_halo(inner, local.ndata[dgl.NID], into, limit)
    cache = FeatureCache.fill(ids, num_nodes, feat_dim, lambda chunk: feat[chunk], capacity=limit)
    # The part's own rows, in place: DGL's kvstore keeps them in shared memory ordered by
    # global id from the start of the part's range.
    rows = feat.local_partition
    start, end = own
    if end > start and rows.shape[0] == end - start:
        cache = cache.with_local_rows(rows, start)
    return cache
