"""Multilevel partitioning within a memory budget: coarsen on disk, METIS, project, refine.

When METIS on the whole graph does not fit, the graph is shrunk first by
size-constrained label propagation (the clustering KaMinPar and Mt-KaHyPar coarsen
with): each node joins the neighbouring cluster it is most strongly connected to,
unless that cluster would outgrow `max_weight` nodes. Passes stream the on-disk CSR a
chunk of rows at a time; only per-node arrays (cluster id, cluster weight) stay in
memory. Clusters become the nodes of the next level (contract), edge weights are the
number of adjacency entries between two clusters, vertex weights the sums of the
balance constraints (train nodes, other nodes, in-edges). METIS partitions the
coarsest level with all constraints; the parts are projected back to the nodes and
refined on the full graph by streaming boundary moves under the same balance
tolerance.

Within a chunk decisions are made together (vectorised) against the cluster weights
at the chunk's start; moves that would overfill a cluster are cut back in chunk
order, so the size limit always holds. Chunks are processed in order, and later
chunks see earlier moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distgnn.partition.adjacency import DiskCSR, build_csr

_HASH = np.uint64(0x9E3779B97F4A7C15)


def _tiebreak(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random order of ids (ties go to the smallest hash)."""
    x = ids.astype(np.uint64) * _HASH + np.uint64(seed * 2 + 1)
    x ^= x >> np.uint64(31)
    return x


def _row_of_entries(indptr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(indptr[lo:hi + 1]))


def _pair_weights(rows: np.ndarray, targets: np.ndarray, weights: np.ndarray | None,
                  num_targets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (row, target) the summed weight, as pairs sorted by row then target:
    (row, target, weight). One sort of the chunk's keys (an argsort with weights)."""
    key = rows * num_targets + targets
    if weights is None:
        key.sort()
    else:
        order = np.argsort(key)
        key, weights = key[order], weights[order]
        del order
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    if weights is None:
        weight = np.diff(np.r_[starts, key.shape[0]])
    else:
        weight = np.add.reduceat(weights, starts) if starts.size else weights[:0]
    unique = key[starts]
    return unique // num_targets, unique % num_targets, weight.astype(np.int64, copy=False)


_TIE_BITS = 20


def _best_per_row(row: np.ndarray, target: np.ndarray, score: np.ndarray, allowed: np.ndarray,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row with an allowed pair, the allowed target with the highest score; ties
    go to a seeded hash of the target. `row` is sorted: a max over each row's segment
    (np.maximum.reduceat) instead of a sort of the pairs."""
    if row.size == 0:
        return row, target
    tie = (_tiebreak(target, seed) & np.uint64((1 << _TIE_BITS) - 1)).astype(np.int64)
    rank = np.where(allowed, (score << _TIE_BITS) | tie, -1)
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    best = np.maximum.reduceat(rank, starts)
    hit = np.flatnonzero(rank == np.repeat(best, np.diff(np.r_[starts, row.shape[0]])))
    first = hit[np.r_[True, row[hit][1:] != row[hit][:-1]]]  # one per row, even on a hash tie
    first = first[rank[first] >= 0]
    return row[first], target[first]


def _admit(nodes: np.ndarray, targets: np.ndarray, node_weight: np.ndarray, room_of) -> np.ndarray:
    """Which moves fit: per target, moves in the given order while their weights fit
    `room_of(targets)` (the room left in each target)."""
    order = np.argsort(targets, kind="stable")
    t = targets[order]
    w = node_weight[nodes[order]]
    csum = np.cumsum(w)
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    before = np.repeat(csum[starts] - w[starts], np.diff(np.r_[starts, t.shape[0]]))
    fits = (csum - before) <= room_of(t)
    keep = np.empty(nodes.shape[0], dtype=np.bool_)
    keep[order] = fits
    return keep


def label_propagation(csr: DiskCSR, node_weight: np.ndarray, max_weight: int, *, chunk: int,
                      seed: int, rounds: int = 5, min_moved: float = 0.01) -> np.ndarray:
    """Cluster id of every node (not compacted), each cluster at most max_weight."""
    n = csr.num_nodes
    cluster = np.arange(n, dtype=np.int64)
    weight = node_weight.astype(np.int64, copy=True)

    def room_of(targets: np.ndarray) -> np.ndarray:
        return max_weight - weight[targets]

    for r in range(rounds):
        moved = 0
        for lo, hi, indices, weights in csr.row_chunks(chunk):
            if indices.size == 0:
                continue
            rows = _row_of_entries(csr.indptr, lo, hi)
            row, target, score = _pair_weights(rows, cluster[indices], weights, n)
            del rows
            node = row + lo
            allowed = (weight[target] + node_weight[node] <= max_weight) | (target == cluster[node])
            row, target = _best_per_row(row, target, score, allowed, seed + r)
            node = row + lo
            move = target != cluster[node]
            node, target = node[move], target[move]
            if node.size == 0:
                continue
            keep = _admit(node, target, node_weight, room_of)
            node, target = node[keep], target[keep]
            np.subtract.at(weight, cluster[node], node_weight[node])
            np.add.at(weight, target, node_weight[node])
            cluster[node] = target
            moved += node.size
        if moved < min_moved * n:
            break
    return cluster


def compact(cluster: np.ndarray) -> tuple[np.ndarray, int]:
    """Cluster ids renumbered 0..C-1 (in order of first id); returns (ids, C)."""
    present = np.zeros(cluster.shape[0], dtype=np.bool_)
    present[cluster] = True
    renumber = np.cumsum(present) - 1
    return renumber[cluster], int(present.sum())


def group_loners(csr: DiskCSR, cluster: np.ndarray, node_weight: np.ndarray, max_weight: int) -> np.ndarray:
    """Nodes without neighbours (never clustered) packed into clusters of max_weight:
    they cut nothing wherever they go, and would otherwise stay one coarse node each."""
    loners = np.flatnonzero(np.diff(csr.indptr) == 0)
    if loners.size < 2:
        return cluster
    per = max(1, max_weight // max(1, int(node_weight[loners].max())))
    cluster = cluster.copy()
    cluster[loners] = loners[(np.arange(loners.size) // per) * per]
    return cluster


def contract(csr: DiskCSR, cluster: np.ndarray, num_clusters: int, folder: Path, *, chunk: int,
             bucket_entries: int) -> DiskCSR:
    """The cluster graph: an entry per pair of adjacent clusters, weights summed."""
    def entries():
        for lo, hi, indices, weights in csr.row_chunks(chunk):
            rows = cluster[_row_of_entries(csr.indptr, lo, hi) + lo]
            cols = cluster[indices]
            keep = rows != cols
            w = np.ones(int(keep.sum()), dtype=np.int64) if weights is None else weights[keep]
            yield rows[keep], cols[keep], w
    return build_csr(entries, num_clusters, folder, bucket_entries=bucket_entries, weighted=True)


def cluster_weights(cluster: np.ndarray, num_clusters: int, vwgt: np.ndarray) -> np.ndarray:
    """Vertex weights of the clusters: each constraint summed over members."""
    out = np.empty((num_clusters, vwgt.shape[1]), dtype=np.int64)
    for c in range(vwgt.shape[1]):
        out[:, c] = np.bincount(cluster, weights=vwgt[:, c], minlength=num_clusters)
    return out


@dataclass(frozen=True, kw_only=True)
class RefineResult:
    part: np.ndarray
    moves: list[int]
    """Nodes moved in each pass."""


def limits(vwgt: np.ndarray, num_parts: int, imbalance: float) -> np.ndarray:
    """Most of each constraint a part may hold: (1 + imbalance) x the mean (at least
    the mean plus the heaviest node, so a constraint can always be met)."""
    total = vwgt.sum(axis=0).astype(np.float64)
    return np.maximum(np.floor(total / num_parts * (1 + imbalance)), np.ceil(total / num_parts) + vwgt.max(axis=0))


def refine(csr: DiskCSR, part: np.ndarray, vwgt: np.ndarray, num_parts: int, *, chunk: int,
           imbalance: float, passes: int = 8) -> RefineResult:
    """Boundary moves that lower the cut: a node goes to the part it has most neighbours
    in when that beats its own part and the target stays under every limit."""
    part = part.astype(np.int64, copy=True)
    cap = limits(vwgt, num_parts, imbalance)
    load = np.stack([np.bincount(part, weights=vwgt[:, c], minlength=num_parts)
                     for c in range(vwgt.shape[1])], axis=1)
    moves = []
    for _pass in range(passes):
        moved = 0
        for lo, hi, indices, weights in csr.row_chunks(chunk):
            if indices.size == 0:
                continue
            rows = _row_of_entries(csr.indptr, lo, hi)
            conn = np.bincount(rows * num_parts + part[indices], weights=weights,
                               minlength=(hi - lo) * num_parts).reshape(hi - lo, num_parts)
            del rows
            own_part = part[lo:hi]
            own = conn[np.arange(hi - lo), own_part]
            conn[np.arange(hi - lo), own_part] = -1
            best = conn.argmax(axis=1)
            gain = conn[np.arange(hi - lo), best] - own
            cand = np.flatnonzero(gain > 0)
            if cand.size == 0:
                continue
            cand = cand[np.argsort(-gain[cand], kind="stable")]
            node, target = cand + lo, best[cand]
            keep = np.ones(node.size, dtype=np.bool_)
            for c in range(vwgt.shape[1]):
                room = cap[c] - load[:, c]
                keep &= _admit(node, target, vwgt[:, c], room.__getitem__)
            node, target = node[keep], target[keep]
            for c in range(vwgt.shape[1]):
                np.subtract.at(load[:, c], part[node], vwgt[node, c])
                np.add.at(load[:, c], target, vwgt[node, c])
            part[node] = target
            moved += node.size
        moves.append(moved)
        if moved == 0:
            break
    return RefineResult(part=part, moves=moves)


def cut_of(csr: DiskCSR, part: np.ndarray, chunk: int) -> int:
    """Cut entries of a symmetric CSR / 2 (undirected edges across parts, weighted)."""
    total = 0
    for lo, hi, indices, weights in csr.row_chunks(chunk):
        rows = _row_of_entries(csr.indptr, lo, hi) + lo
        across = part[rows] != part[indices]
        total += int(across.sum() if weights is None else weights[across].sum())
    return total // 2
