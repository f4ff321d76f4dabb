"""`--memory-budget`: parse it, and plan which path a partition run takes within it (pure).

Two paths write the same shard contract:

- in-memory: the whole graph, its symmetric CSR and METIS in this process (the fastest;
  chosen whenever estimate.estimate's peak fits the budget);
- streaming: the input is copied batch by batch into flat files under the temporary
  folder, the symmetric adjacency is built there in row buckets, and every later pass
  reads bounded chunks. Only per-node arrays (parts, cluster ids, weights, the new ids)
  live in memory. METIS runs on the whole graph when its working set fits what is left
  of the budget (the same partition as the in-memory path), else on a graph coarsened
  by label propagation until it fits, and the result is refined on the full graph.

Every figure is a model of the largest arrays alive at once, in bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distgnn.errors import InputError
from distgnn.partition import estimate as est

BASE_BYTES = est._BASE
"""The interpreter with NumPy, SciPy, pandas and pyarrow imported (measured 128 MiB)."""
MIN_WORK_BYTES = 4 * 2**20
"""The least room for chunks that the streaming path accepts."""
PER_NODE_BYTES = 64
"""Per-node arrays the streaming path keeps at its largest phase (coarsening: indptr,
cluster ids and weights, node weights, the node -> cluster map, three int32 balance
constraints; about 52 bytes). 48 was too few: a 30M-node graph under a 4 GiB budget
peaked at 4.08 GiB."""
PASS_BYTES_PER_EDGE = 128
"""A streaming pass over edges: the edge pair read, ids mapped, sort keys, temporaries."""
SORT_BYTES_PER_ENTRY = 96
"""Sorting one bucket of adjacency entries: rows and columns read, keys, sort, unique."""
MIN_CHUNK = 1024
DEFAULT_SHARE = 0.75
"""Default budget: this share of the memory available when the run starts."""
METIS_ID_BYTES = 4

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}


def parse_size(text: str, flag: str = "--memory-budget") -> int:
    """'768MiB', '16GiB', '4G', '1.5GB', '1000000' -> bytes (binary units for K/M/G/T)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text or "")
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InputError(f"{flag} {text!r}: expected a size such as 768MiB, 16GiB or 4G")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"{flag} {text!r}: must be more than 0")
    return value


def default_budget() -> int:
    import psutil

    return int(psutil.virtual_memory().available * DEFAULT_SHARE)


def metis_bytes(num_nodes: int, num_adjacent: int, ncon: int = 3, id_bytes: int = METIS_ID_BYTES) -> int:
    """METIS's working set on a CSR graph plus the CSR, weights and result we hand it."""
    m = id_bytes
    return (num_adjacent * (m + est._METIS_PER_ADJ_PER_ID_BYTE * m + m)  # adjncy, its hierarchy, adjwgt
            + num_nodes * (4 * m + est._METIS_PER_NODE + ncon * m + 8))


def floor_bytes(num_nodes: int) -> int:
    """The smallest budget the streaming path runs in for a graph of this many nodes."""
    return BASE_BYTES + PER_NODE_BYTES * num_nodes + MIN_WORK_BYTES


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a run fits its budget."""

    path: str
    """"in-memory" or "streaming"."""
    budget_bytes: int
    in_memory_peak_bytes: int
    """What the in-memory path would need (estimate.estimate)."""
    peak_bytes: int
    """The estimated peak of the path taken (at or under the budget)."""
    work_bytes: int
    """Room left for chunks after the interpreter and the per-node arrays."""
    chunk_edges: int
    """Edges (or adjacency entries) per streaming pass chunk."""
    bucket_entries: int
    """Adjacency entries per bucket sorted in memory."""
    metis_whole: bool
    """Whether METIS on the whole symmetric graph is expected to fit (else: coarsen)."""
    temp_disk_bytes: int
    """Temporary files of the streaming path (0 in memory)."""
    final_disk_bytes: int
    """The shards (estimate.estimate)."""

    @property
    def coarsen(self) -> bool:
        return self.path == "streaming" and not self.metis_whole

    def describe(self) -> str:
        if self.path == "in-memory":
            return "in-memory (graph, adjacency and METIS fit the budget)"
        how = "METIS on the whole graph" if self.metis_whole else "coarsen, METIS, project, refine"
        return f"streaming through disk ({how})"


def work_bytes(budget: int, num_nodes: int) -> int:
    return budget - BASE_BYTES - PER_NODE_BYTES * num_nodes


def plan(*, budget: int, num_nodes: int, num_edges: int, feat_dim: int, num_parts: int,
         method: str, force_streaming: bool = False, metis_id_bytes: int = METIS_ID_BYTES) -> Plan:
    """Pick the path and its chunk sizes; InputError when the budget is under the floor.
    metis_id_bytes: the id width of the METIS build an in-memory run would use."""
    whole = est.estimate(num_nodes=num_nodes, num_edges=num_edges, feat_dim=feat_dim,
                         num_parts=num_parts, method=method, metis_id_bytes=metis_id_bytes)
    temp = temp_disk_bytes(num_nodes, num_edges, feat_dim)
    if whole.peak_memory_bytes <= budget and not force_streaming:
        return Plan(path="in-memory", budget_bytes=budget, in_memory_peak_bytes=whole.peak_memory_bytes,
                    peak_bytes=whole.peak_memory_bytes, work_bytes=budget - BASE_BYTES,
                    chunk_edges=num_edges, bucket_entries=2 * num_edges, metis_whole=True,
                    temp_disk_bytes=0, final_disk_bytes=whole.disk_bytes)
    floor = floor_bytes(num_nodes)
    if budget < floor:
        raise InputError(
            f"--memory-budget {_mib(budget)} is below the floor of {_mib(floor)} for this graph "
            f"({num_nodes} nodes: the interpreter, {PER_NODE_BYTES} bytes a node, and room for chunks)")
    work = work_bytes(budget, num_nodes)
    needs_metis = method == "metis" and num_parts > 1
    metis_whole = not needs_metis or metis_bytes(num_nodes, 2 * num_edges) <= work
    # Chunks are sized to fill the room, so the model's peak is the budget itself; the
    # measured peaks sit under it (0.74 GiB under 1 GiB, 2.86 GiB under 4 GiB).
    peak = min(budget, BASE_BYTES + PER_NODE_BYTES * num_nodes + work)
    return Plan(path="streaming", budget_bytes=budget, in_memory_peak_bytes=whole.peak_memory_bytes,
                peak_bytes=peak, work_bytes=work,
                chunk_edges=max(MIN_CHUNK, work // PASS_BYTES_PER_EDGE),
                bucket_entries=max(MIN_CHUNK, work // SORT_BYTES_PER_ENTRY),
                metis_whole=metis_whole, temp_disk_bytes=temp, final_disk_bytes=whole.disk_bytes)


def temp_disk_bytes(num_nodes: int, num_edges: int, feat_dim: int) -> int:
    """The streaming path's temporary files at their largest (while shards are written):
    the input copy (edges, features, labels, masks), the symmetric adjacency and its
    buckets, and the edges sorted into parts."""
    n, e = num_nodes, num_edges
    inputs = 16 * e + 4 * feat_dim * n + 11 * n
    adjacency = 8 * (n + 1) + 8 * 2 * e  # indptr, indices (int64 at most)
    buckets = 16 * 2 * e
    by_part = 24 * e  # src, dst (and eid for cut edges) per part
    return inputs + adjacency + max(buckets, by_part)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f}GiB"
