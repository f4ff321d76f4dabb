"""--dry-run: peak memory and disk a run will need, from the input's size alone (pure).

Per-phase models of the largest arrays alive at once; the METIS term was calibrated
on a 2M-node / 20M-edge graph (4 parts, 3 constraints), where METIS 5.1 held about
110 bytes per adjacency entry of the symmetric graph with 64-bit ids and 57 with
32-bit ones.
"""

from __future__ import annotations

from dataclasses import dataclass

_ID = 8
_BASE = 160 * 2**20
"""The interpreter with NumPy, pandas and pyarrow imported."""
_METIS_PER_ADJ_PER_ID_BYTE = 14
_METIS_PER_NODE = 200
_SPILL_BYTES = 256 * 2**20  # keep in line with run.SPILL_BYTES


@dataclass(frozen=True, kw_only=True)
class Estimate:
    graph_bytes: int
    """The loaded graph: edge arrays, features, labels, masks."""
    peak_memory_bytes: int
    """The largest phase: loading, the METIS input, METIS itself, or writing."""
    disk_bytes: int
    """Shards, assignment and manifest (Parquet, integer columns delta-encoded)."""


def estimate(*, num_nodes: int, num_edges: int, feat_dim: int, num_parts: int, method: str,
             metis_id_bytes: int = 4) -> Estimate:
    """metis_id_bytes: the width of the METIS build's ids (4 or 8), see metis.choose_library."""
    n, e = num_nodes, num_edges
    adj = 2 * e  # both directions of every edge, before de-duplication
    edges = 2 * e * _ID
    feats = n * 4 * feat_dim
    small = n * (_ID + 3)  # labels and masks
    graph = edges + feats + small
    load = graph * 3 // 2  # readers hold a column or two twice while converting
    if method == "metis" and num_parts > 1:
        m = metis_id_bytes
        csr = graph + adj * (2 * 4 + 1) + adj * m  # 32-bit row/col ids, SciPy CSR, METIS's copy
        resident = small if edges + feats >= _SPILL_BYTES else graph  # the rest is spilled
        metis = resident + adj * m + n * 4 * m + adj * _METIS_PER_ADJ_PER_ID_BYTE * m + n * _METIS_PER_NODE
    else:
        csr = metis = 0
    # the layout (ids, edge order) plus one part's gathered rows and Arrow copies
    write = graph + 3 * n * _ID + e * _ID + 2 * (graph // max(num_parts, 1))
    peak = _BASE + max(load, csr, metis, write)

    cut_share = 0.0 if num_parts == 1 else min(1.0, 0.5 * (1 - 1 / num_parts))
    # Integer columns are delta-encoded (shards._integer_encodings): an ascending id
    # column takes about a byte a value, a column of unordered node ids the bits of a
    # node id plus a sign; features are stored as they are.
    ascending = 1
    node_id = (max(n, 2) - 1).bit_length() / 8 + 0.25
    disk = (
        n * (2 * ascending + 4 * feat_dim + 1 + 3 / 8)  # nodes.parquet: id, orig_id, feat, label, masks
        + e * (1 + cut_share) * (2 * node_id + ascending + 1 / 8)  # edges.parquet: own plus outgoing
        + e * cut_share * (ascending + node_id + 1)  # halo.parquet, at most one row per cut edge
        + n * (ascending + node_id + 1)  # assignment.parquet
        + num_parts * 64 * 1024  # footers, part.json, manifest
    )
    return Estimate(graph_bytes=int(graph), peak_memory_bytes=int(peak), disk_bytes=int(disk))
