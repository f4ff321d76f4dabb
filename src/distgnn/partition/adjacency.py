"""The symmetric adjacency on disk, built in row buckets (the bounded-memory path).

`build_csr` turns a stream of (row, col[, weight]) entries into a CSR whose rows are
sorted and de-duplicated (weights of repeats summed), in three passes that each hold
one chunk: count the entries of every row, append each entry to the file of its row
range (buckets sized to fit the budget), then sort each bucket in memory and append it
to the CSR files. Without weights the result equals `layout.symmetric_csr` on the same
edges, entry for entry.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from distgnn.graph.spilled import DST, SpilledGraph, append, chunks, read_slice

Entries = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]
"""A re-startable stream of (rows, cols, weights or None) chunks."""

INDPTR, INDICES, WEIGHTS = "indptr.i64", "indices", "weights.i64"


@dataclass(kw_only=True)
class DiskCSR:
    """A CSR graph whose indices (and weights) stay on disk; indptr is in memory."""

    folder: Path
    num_nodes: int
    indptr: np.ndarray
    """int64 [N + 1]."""
    index_dtype: type
    weighted: bool

    @property
    def num_entries(self) -> int:
        return int(self.indptr[-1])

    def row_chunks(self, max_entries: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
        """(first row, last row + 1, indices, weights or None) with about max_entries
        entries each (a row never splits; one huge row is one chunk)."""
        n = self.num_nodes
        lo = 0
        with open(self.folder / INDICES, "rb") as fi, \
                (open(self.folder / WEIGHTS, "rb") if self.weighted else _Null()) as fw:
            while lo < n:
                target = self.indptr[lo] + max(1, max_entries)
                hi = int(np.searchsorted(self.indptr, target, side="right")) - 1
                hi = min(n, max(hi, lo + 1))
                count = int(self.indptr[hi] - self.indptr[lo])
                indices = np.fromfile(fi, dtype=self.index_dtype, count=count)
                weights = np.fromfile(fw, dtype=np.int64, count=count) if self.weighted else None
                yield lo, hi, indices, weights
                lo = hi

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The whole CSR in memory (when METIS on it fits the budget)."""
        e = self.num_entries
        indices = read_slice(self.folder / INDICES, self.index_dtype, 0, e)
        weights = read_slice(self.folder / WEIGHTS, np.int64, 0, e) if self.weighted else None
        return self.indptr, indices, weights

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *_exc):
        return False


def index_dtype(num_nodes: int) -> type:
    return np.int32 if num_nodes < np.iinfo(np.int32).max else np.int64


def _bucket_bounds(counts: np.ndarray, bucket_entries: int) -> np.ndarray:
    """Row boundaries [0, ..., N] so each bucket holds at most bucket_entries entries
    (a single heavier row gets a bucket of its own)."""
    ends = np.cumsum(counts)
    bounds = [0]
    n = counts.shape[0]
    while bounds[-1] < n:
        start = bounds[-1]
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + bucket_entries, side="right"))
        bounds.append(min(n, max(stop, start + 1)))
    return np.asarray(bounds, dtype=np.int64)


def build_csr(entries: Entries, num_nodes: int, folder: Path, *, bucket_entries: int,
              weighted: bool, on_bucket=None) -> DiskCSR:
    """See the module docstring. `on_bucket(done, total)` reports sorting progress."""
    folder.mkdir(parents=True, exist_ok=False)
    counts = np.zeros(num_nodes, dtype=np.int64)
    for rows, _cols, _w in entries():
        counts += np.bincount(rows, minlength=num_nodes)
    bounds = _bucket_bounds(counts, bucket_entries)
    del counts
    buckets = folder / "buckets"
    buckets.mkdir()
    for rows, cols, weights in entries():
        which = np.searchsorted(bounds, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        split = np.searchsorted(which[order], np.arange(bounds.shape[0]))
        for b in np.unique(which):
            sel = order[split[b]:split[b + 1]]
            append(buckets / f"{b}.rows", rows[sel].astype(np.int64, copy=False))
            append(buckets / f"{b}.cols", cols[sel].astype(np.int64, copy=False))
            if weighted:
                append(buckets / f"{b}.w", weights[sel].astype(np.int64, copy=False))
    dtype = index_dtype(num_nodes)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    (folder / INDICES).touch()
    if weighted:
        (folder / WEIGHTS).touch()
    total = bounds.shape[0] - 1
    for b in range(total):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        _sort_bucket(buckets, b, lo, hi, num_nodes, folder, dtype, weighted, indptr)
        if on_bucket is not None:
            on_bucket(b + 1, total)
    shutil.rmtree(buckets)
    np.cumsum(indptr, out=indptr)
    return DiskCSR(folder=folder, num_nodes=num_nodes, indptr=indptr, index_dtype=dtype, weighted=weighted)


def _sort_bucket(buckets: Path, b: int, lo: int, hi: int, n: int, folder: Path, dtype,
                 weighted: bool, indptr: np.ndarray) -> None:
    path = buckets / f"{b}.rows"
    if not path.exists():
        return
    rows = np.fromfile(path, dtype=np.int64)
    cols = np.fromfile(buckets / f"{b}.cols", dtype=np.int64)
    key = (rows - lo) * n + cols  # (hi - lo) * n fits int64 for any graph METIS takes
    del rows, cols
    if weighted:
        order = np.argsort(key, kind="stable")
        key = key[order]
        weights = np.fromfile(buckets / f"{b}.w", dtype=np.int64)[order]
        del order
    first = np.empty(key.shape[0], dtype=np.bool_)
    first[:1] = True
    if not weighted:
        key.sort()
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    unique = key[starts]
    del first
    append(folder / INDICES, (unique % n).astype(dtype))
    if weighted:
        append(folder / WEIGHTS, np.add.reduceat(weights, starts) if starts.size else weights[:0])
    indptr[lo + 1:hi + 1] = np.bincount(unique // n, minlength=hi - lo)


def symmetric_entries(graph: SpilledGraph, chunk: int) -> Entries:
    """Both directions of every non-loop edge of the spilled graph."""
    def stream():
        for _start, src, dst in graph.edges(chunk // 2):
            keep = src != dst
            a, b = src[keep], dst[keep]
            yield np.concatenate([a, b]), np.concatenate([b, a]), None
    return stream


def in_degree(graph: SpilledGraph, chunk: int) -> np.ndarray:
    degree = np.zeros(graph.num_nodes, dtype=np.int64)
    for _start, dst in chunks(graph.folder / DST, np.int64, graph.num_edges, chunk):
        degree += np.bincount(dst, minlength=graph.num_nodes)
    return degree
