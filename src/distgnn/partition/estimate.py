"""--dry-run: peak memory and disk a run will need, from the input's size alone (pure)."""

from __future__ import annotations

from dataclasses import dataclass

# Per-item byte costs of the run's largest simultaneous arrays (int64 ids).
_ID = 8


@dataclass(frozen=True, kw_only=True)
class Estimate:
    graph_bytes: int
    """The loaded graph: edge arrays, features, labels, masks."""
    peak_memory_bytes: int
    """Graph plus the largest phase's working set (METIS and its input CSR)."""
    disk_bytes: int
    """Shards, assignment and manifest (uncompressed Parquet)."""


def estimate(*, num_nodes: int, num_edges: int, feat_dim: int, num_parts: int, method: str) -> Estimate:
    n, e = num_nodes, num_edges
    node_bytes = n * (4 * feat_dim + _ID + 3)  # feat, label, three masks
    graph = 2 * e * _ID + node_bytes
    csr = 2 * e * _ID + (n + 1) * _ID  # symmetric adjacency, both directions
    # METIS 5.1 keeps the input graph, the coarsening hierarchy (about the input's size
    # again) and per-vertex work arrays (~20 idx_t per vertex).
    metis = (csr * 2 + 20 * n * _ID) if method == "metis" and num_parts > 1 else 0
    sort_keys = 2 * e * _ID + 2 * e  # CSR keys plus the de-duplication mask
    layout = n * 3 * _ID + e * (_ID + 2 + 2)  # renumbering, edge order, owner parts
    # writing one part gathers its share of nodes and edges once more
    per_part = (node_bytes + 4 * e * _ID) // max(num_parts, 1)
    phase = max(csr + sort_keys, csr + metis, layout + per_part)
    peak = graph + phase + 200 * 2**20  # interpreter, NumPy, Arrow
    cut_share = 0.0 if num_parts == 1 else min(1.0, 0.5 * (1 - 1 / num_parts))
    edge_rows = e * (1 + cut_share)
    disk = (
        n * (2 * _ID + 4 * feat_dim + _ID + 3)  # nodes.parquet
        + edge_rows * (3 * _ID + 1)  # edges.parquet
        + e * cut_share * 3 * _ID  # halo.parquet, bounded by the cut edges
        + n * (2 * _ID + 4)  # assignment.parquet
        + num_parts * 64 * 1024  # footers, part.json, manifest
    )
    return Estimate(graph_bytes=int(graph), peak_memory_bytes=int(peak), disk_bytes=int(disk))
