"""`probe_graph(spec)`: sizes of a graph input without loading it (for `partition --dry-run`).

- Parquet folder: footers only (row counts; feature dim from the fixed-size list
  type; node count from meta.json, nodes.parquet or the src/dst column
  statistics). Exact.
- Edge list: the file size divided by the average data-line length in 16
  windows (1 MiB in all) spread over the file; the node count from
  nodes.parquet, else the largest id seen in those windows. Not exact, unless
  the whole file fits in the sample (then it is parsed).
- DGL file: DGL has no metadata-only reader, so the file is loaded (exact; it
  costs about what `load_graph` costs). A size-only guess would be wrong by the
  unknown share of features, and zero counts would fail the dry run's checks.
- synthetic: from its parameters. Exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from distgnn.errors import InputError
from distgnn.graph import dglfile, edgelist, parquet_graph, synthetic
from distgnn.graph.load import resolve_spec

SAMPLE_BYTES = 1 << 20
SAMPLE_WINDOWS = 16


@dataclass(frozen=True, kw_only=True)
class GraphProbe:
    """Sizes of a graph input; estimates unless `exact`."""

    num_nodes: int
    num_edges: int
    feat_dim: int
    """0 when there are no features."""
    input_bytes: int
    """Bytes of the input files on disk (0 for synthetic graphs)."""
    exact: bool
    """False when the counts are estimates (edge lists larger than the sample)."""


def probe_graph(spec: str) -> GraphProbe:
    resolved = resolve_spec(spec)
    if resolved.kind == "synthetic":
        return _probe_synthetic(spec)
    if resolved.kind == "parquet":
        return _probe_folder(resolved.path)
    if resolved.kind == "edgelist":
        return _probe_edge_list(resolved.path)
    return _probe_dgl(resolved.path)


def _probe_synthetic(spec: str) -> GraphProbe:
    cfg = synthetic.parse_spec(spec)
    return GraphProbe(num_nodes=cfg.nodes, num_edges=cfg.nodes * cfg.degree,
                      feat_dim=cfg.feat_dim, input_bytes=0, exact=True)


@dataclass(frozen=True, kw_only=True)
class _NodesFooter:
    num_rows: int
    feat_dim: int
    size: int


def _nodes_footer(path: Path) -> _NodesFooter | None:
    if not path.exists():
        return None
    pf = parquet_graph.open_parquet(path)
    dim = 0
    index = pf.schema_arrow.get_field_index(parquet_graph.FEAT_COLUMN)
    if index >= 0:
        kind = pf.schema_arrow.field(index).type
        dim = parquet_graph.feat_dim_of_type(kind, path)
        if dim is None:
            # a plain list column: its first row tells the width
            batch = next(pf.iter_batches(batch_size=1, columns=[parquet_graph.FEAT_COLUMN]), None)
            dim = 0 if batch is None else len(batch.column(0)[0].values)
    return _NodesFooter(num_rows=pf.metadata.num_rows, feat_dim=dim, size=path.stat().st_size)


def _max_id_from_stats(pf, path: Path) -> int:
    """Largest src/dst id from the row-group statistics, reading the columns if absent."""
    schema = pf.schema_arrow
    top = -1
    for group in range(pf.num_row_groups):
        row_group = pf.metadata.row_group(group)
        for column in ("src", "dst"):
            stats = row_group.column(schema.get_field_index(column)).statistics
            if stats is None or not stats.has_min_max:
                return _max_id_from_columns(pf)
            top = max(top, int(stats.max))
    return top


def _max_id_from_columns(pf) -> int:
    table = pf.read(columns=["src", "dst"])
    return max(int(pc.max(table.column(c)).as_py() or -1) for c in ("src", "dst"))


def _probe_folder(folder: Path) -> GraphProbe:
    meta = parquet_graph.read_meta(folder / parquet_graph.META_FILE)
    edges_path = folder / parquet_graph.EDGES_FILE
    pf = parquet_graph.open_parquet(edges_path)
    for column in ("src", "dst"):
        parquet_graph.require_integer(pf, edges_path, column)
    nodes = _nodes_footer(folder / parquet_graph.NODES_FILE)
    if meta.num_nodes is not None:
        num_nodes = meta.num_nodes
    elif nodes is not None:
        num_nodes = nodes.num_rows
    else:
        num_nodes = _max_id_from_stats(pf, edges_path) + 1
    meta_path = folder / parquet_graph.META_FILE
    size = edges_path.stat().st_size + (nodes.size if nodes else 0)
    size += meta_path.stat().st_size if meta_path.exists() else 0
    return GraphProbe(num_nodes=num_nodes, num_edges=pf.metadata.num_rows,
                      feat_dim=nodes.feat_dim if nodes else 0, input_bytes=size, exact=True)


def _sample_ids(lines: list[bytes], layout: edgelist.Layout) -> tuple[int, int, int]:
    """(data lines, their bytes, largest id) of a sample; unparsable lines are skipped."""
    count = nbytes = 0
    top = -1
    for raw in lines:
        fields = edgelist.line_fields(raw.decode("utf-8", "replace"), layout.delimiter)
        if fields is None or len(fields) != 2:
            continue
        try:
            top = max(top, int(fields[0]), int(fields[1]))
        except ValueError:
            continue
        count += 1
        nbytes += len(raw)
    return count, nbytes, top


def _windows(path: Path, size: int) -> list[list[bytes]]:
    """Whole lines from SAMPLE_WINDOWS evenly spread windows; the first starts at byte 0."""
    width = SAMPLE_BYTES // SAMPLE_WINDOWS
    samples = []
    with path.open("rb") as handle:
        for i in range(SAMPLE_WINDOWS):
            offset = (size - width) * i // (SAMPLE_WINDOWS - 1)
            handle.seek(offset)
            lines = handle.read(width).splitlines(keepends=True)
            start = 1 if offset > 0 else 0  # a window may begin mid-line
            stop = len(lines) if offset + width >= size else len(lines) - 1
            samples.append(lines[start:stop])
    return samples


def _probe_edge_list(path: Path) -> GraphProbe:
    layout = edgelist.sniff(path)
    size = path.stat().st_size
    nodes = _nodes_footer(path.parent / parquet_graph.NODES_FILE)
    input_bytes = size + (nodes.size if nodes else 0)
    feat_dim = nodes.feat_dim if nodes else 0
    if size <= SAMPLE_BYTES:
        src, dst, _ = edgelist.read_edge_list(path)
        num_nodes = nodes.num_rows if nodes else int(max(src.max(), dst.max())) + 1
        return GraphProbe(num_nodes=num_nodes, num_edges=int(src.shape[0]), feat_dim=feat_dim,
                          input_bytes=input_bytes, exact=True)
    samples = _windows(path, size)
    head = [line for number, line in enumerate(samples[0], start=1)
            if number != layout.header_line]
    # comments and the header are expected at the top only; their bytes are not edges
    _, head_bytes, _ = _sample_ids(head, layout)
    other_bytes = sum(len(line) for line in head) - head_bytes
    count = data_bytes = 0
    top = -1
    for lines in [head, *samples[1:]]:
        n, nbytes, largest = _sample_ids(lines, layout)
        count, data_bytes, top = count + n, data_bytes + nbytes, max(top, largest)
    if count == 0:
        raise InputError(f"{path}: no edge found in a {SAMPLE_BYTES}-byte sample")
    num_edges = round((size - other_bytes) * count / data_bytes)
    num_nodes = nodes.num_rows if nodes else top + 1
    return GraphProbe(num_nodes=num_nodes, num_edges=num_edges, feat_dim=feat_dim,
                      input_bytes=input_bytes, exact=False)


def _probe_dgl(path: Path) -> GraphProbe:
    size = path.stat().st_size
    graph = dglfile.read_dgl_graph(path)
    key = dglfile.first_key(graph.ndata, dglfile.FEAT_KEYS)
    feat_dim = 0
    if key is not None:
        shape = tuple(graph.ndata[key].shape)
        feat_dim = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return GraphProbe(num_nodes=int(graph.num_nodes()), num_edges=int(graph.num_edges()),
                      feat_dim=feat_dim, input_bytes=size, exact=True)
