"""A graph held on disk as flat binary columns, read back in bounded batches.

The bounded-memory `partition` copies its input here once (see `distgnn.graph.stream`)
and every later pass reads chunks of it: no pass holds more than one chunk of edges or
node rows. The files are plain little-endian arrays, one per column:

    src.i64, dst.i64          one int64 per edge, input order
    feat.f32                  num_nodes x feat_dim float32, row-major, node-id order
    label.i64                 one int64 per node (-1 unlabeled)
    train_mask.u8, ...        one byte per node

Reads go through read(2) into fresh arrays, never mmap: mapped pages count in the
process's RSS while they stay mapped, read pages only in the page cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from distgnn.graph.data import MASK_NAMES

SRC, DST, FEAT, LABEL, TARGET = "src.i64", "dst.i64", "feat.f32", "label.i64", "target.f32"


def mask_file(name: str) -> str:
    return f"{name}.u8"


def append(path: Path, array: np.ndarray) -> None:
    with open(path, "ab") as f:
        np.ascontiguousarray(array).tofile(f)


def read_slice(path: Path, dtype, start: int, count: int, width: int = 1) -> np.ndarray:
    """Rows [start, start+count) of a flat file of `width`-wide rows."""
    item = np.dtype(dtype).itemsize * width
    with open(path, "rb") as f:
        f.seek(start * item)
        out = np.fromfile(f, dtype=dtype, count=count * width)
    if out.shape[0] != count * width:
        raise OSError(f"{path}: truncated (wanted rows {start}..{start + count})")
    return out.reshape(count, width) if width > 1 else out


def chunks(path: Path, dtype, total: int, chunk: int, width: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of a flat file, `chunk` rows at a time, one open file."""
    item = np.dtype(dtype).itemsize * width
    chunk = max(1, chunk)
    with open(path, "rb") as f:
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            out = np.fromfile(f, dtype=dtype, count=count * width)
            if out.shape[0] != count * width:
                raise OSError(f"{path}: truncated at row {start} ({item} bytes a row)")
            yield start, (out.reshape(count, width) if width > 1 else out)


@dataclass(kw_only=True)
class NodeBatch:
    start: int
    count: int
    feat: np.ndarray | None
    label: np.ndarray | None
    masks: dict[str, np.ndarray]
    target: np.ndarray | None = None


@dataclass(kw_only=True)
class SpilledGraph:
    """The graph's facts and where its columns are; GraphData's counterpart on disk."""

    folder: Path
    name: str
    source: str
    num_nodes: int
    num_edges: int
    feat_dim: int = 0
    has_label: bool = False
    masks: tuple[str, ...] = ()
    num_classes: int | None = None
    has_target: bool = False

    def edges(self, chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first edge id, src, dst) in input order."""
        for (start, src), (_, dst) in zip(chunks(self.folder / SRC, np.int64, self.num_edges, chunk),
                                         chunks(self.folder / DST, np.int64, self.num_edges, chunk)):
            yield start, src, dst

    def nodes(self, chunk: int) -> Iterator[NodeBatch]:
        """Node rows in id order; `chunk` is a byte-sized row count (features dominate)."""
        for start in range(0, self.num_nodes, max(1, chunk)):
            count = min(chunk, self.num_nodes - start)
            yield self.node_rows(start, count)

    def node_rows(self, start: int, count: int) -> NodeBatch:
        f = self.folder
        return NodeBatch(
            start=start, count=count,
            feat=read_slice(f / FEAT, np.float32, start, count, self.feat_dim).reshape(count, self.feat_dim)
            if self.feat_dim else None,
            label=read_slice(f / LABEL, np.int64, start, count) if self.has_label else None,
            masks={m: read_slice(f / mask_file(m), np.bool_, start, count) for m in self.masks},
            target=read_slice(f / TARGET, np.float32, start, count) if self.has_target else None,
        )

    def column(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """One per-node column whole-file in chunks (label or a mask)."""
        if name == "label":
            return chunks(self.folder / LABEL, np.int64, self.num_nodes, 1 << 20)
        return chunks(self.folder / mask_file(name), np.bool_, self.num_nodes, 1 << 22)

    def node_chunk_rows(self, work_bytes: int) -> int:
        """Node rows per batch that fit `work_bytes` with a few copies of each row."""
        row = 4 * self.feat_dim + 8 + 4 + len(self.masks) + 16
        return max(1, work_bytes // (4 * row))


class SpillWriter:
    """Appends batches of edges and node rows to a SpilledGraph's files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=False)
        self.num_edges = 0
        self.num_node_rows = 0
        self.feat_dim: int | None = None
        self.has_label = False
        self.has_target = False
        self.masks: set[str] = set()

    def add_edges(self, src: np.ndarray, dst: np.ndarray) -> None:
        append(self.folder / SRC, src.astype(np.int64, copy=False))
        append(self.folder / DST, dst.astype(np.int64, copy=False))
        self.num_edges += int(src.shape[0])

    def add_nodes(self, count: int, *, feat=None, label=None, masks=None, target=None) -> None:
        if feat is not None:
            self.feat_dim = int(feat.shape[1])
            append(self.folder / FEAT, feat.astype(np.float32, copy=False))
        if label is not None:
            self.has_label = True
            append(self.folder / LABEL, label.astype(np.int64, copy=False))
        if target is not None:
            self.has_target = True
            append(self.folder / TARGET, target.astype(np.float32, copy=False))
        for name, mask in (masks or {}).items():
            self.masks.add(name)
            append(self.folder / mask_file(name), mask.astype(np.bool_, copy=False))
        self.num_node_rows += count

    def touch(self) -> None:
        """Create the edge files even when no edge was added (an empty graph)."""
        for name in (SRC, DST):
            (self.folder / name).touch()

    def finish(self, *, name: str, source: str, num_nodes: int, num_classes: int | None) -> SpilledGraph:
        self.touch()
        return SpilledGraph(
            folder=self.folder, name=name, source=source, num_nodes=num_nodes, num_edges=self.num_edges,
            feat_dim=self.feat_dim or 0, has_label=self.has_label,
            masks=tuple(m for m in MASK_NAMES if m in self.masks), num_classes=num_classes,
            has_target=self.has_target,
        )


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
