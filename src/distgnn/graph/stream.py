"""`spill_graph(spec, folder)`: copy any graph input to a SpilledGraph in bounded batches.

The streaming counterpart of `load_graph`: the same checks with the same one-line
messages (file, column, row or line), applied batch by batch. Checks that need the
whole input (node ids against a node count known only at the end, labels against the
number of classes) run when the copy is complete, over the copied columns, chunk by
chunk; a bad row found there is reported exactly as `load_graph` reports it.

- Parquet folders and nodes.parquet: record batches of `rows` rows.
- Edge lists: pandas' C reader in chunks of `rows` lines.
- DGL files: DGL loads a file whole, so the file is loaded and then copied; `limit`
  refuses one whose arrays would not fit (with a message saying so).
- synthetic: generated in deterministic chunks (see `distgnn.graph.synthetic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from distgnn.errors import InputError
from distgnn.graph import dglfile, edgelist, parquet_graph, synthetic
from distgnn.graph.data import MASK_NAMES
from distgnn.graph.load import resolve_spec
from distgnn.graph.parquet_graph import FEAT_COLUMN, LABEL_COLUMN
from distgnn.graph.progress import Progress, report
from distgnn.graph.spilled import SpilledGraph, SpillWriter
from distgnn.graph.validate import check_labels, check_node_ids, check_nonempty, sanitize_name

DGL_BYTES_PER_FILE_BYTE = 3
"""DGL's loader holds the file's tensors plus our converted copies."""


def spill_graph(spec: str, folder: Path, *, rows: int, limit: int | None = None,
                progress: Progress | None = None) -> SpilledGraph:
    resolved = resolve_spec(spec)
    writer = SpillWriter(folder)
    if resolved.kind == "synthetic":
        return synthetic.spill_synthetic(spec, writer, rows=rows, progress=progress)
    if resolved.kind == "dgl":
        return _spill_dgl(resolved.path, writer, limit)
    if resolved.kind == "parquet":
        return _spill_folder(resolved.path, writer, rows, progress)
    return _spill_edge_list(resolved.path, writer, rows, progress)


# ---------------------------------------------------------------- Parquet folder


def _spill_parquet_edges(path: Path, writer: SpillWriter, rows: int, progress) -> tuple[int, int]:
    """Copy edges.parquet; returns the smallest and largest id seen."""
    pf = parquet_graph.open_parquet(path)
    for column in ("src", "dst"):
        parquet_graph.require_integer(pf, path, column)
    total, row0, lo, hi = pf.metadata.num_rows, 0, 0, -1
    for batch in _batches(pf, path, ["src", "dst"], rows):
        src = parquet_graph.int_chunk(batch.column(0), f"{path}: column 'src'", row0)
        dst = parquet_graph.int_chunk(batch.column(1), f"{path}: column 'dst'", row0)
        writer.add_edges(src, dst)
        if src.size:
            lo = min(lo, int(src.min()), int(dst.min()))
            hi = max(hi, int(src.max()), int(dst.max()))
        row0 += batch.num_rows
        report(progress, "read edges", row0, total)
    return lo, hi


def _batches(pf, path: Path, columns: list[str], rows: int):
    import pyarrow as pa

    try:
        yield from pf.iter_batches(batch_size=max(1, rows), columns=columns)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read ({reason})") from None


def _spill_nodes(path: Path, writer: SpillWriter, rows: int, progress) -> int:
    """Copy nodes.parquet's known columns; returns its row count."""
    pf = parquet_graph.open_parquet(path)
    columns, dim = parquet_graph.node_columns(pf, path)
    total = pf.metadata.num_rows
    if not columns:
        return total
    row0 = 0
    for batch in _batches(pf, path, columns, rows):
        count = batch.num_rows
        values = {}
        for name in columns:
            chunk = batch.column(batch.schema.get_field_index(name))
            where = f"{path}: column '{name}'"
            if name == FEAT_COLUMN:
                values["feat"] = parquet_graph.feat_chunk(chunk, dim, where, row0)
                dim = values["feat"].shape[1]
            elif name == LABEL_COLUMN:
                import pyarrow.compute as pc

                values["label"] = parquet_graph.int_chunk(pc.fill_null(chunk, -1), where, row0)
            elif name == parquet_graph.TARGET_COLUMN:
                values["target"] = parquet_graph.target_chunk(chunk, where, row0)
            else:
                values.setdefault("masks", {})[name] = parquet_graph.bool_chunk(chunk)
        if count:
            writer.add_nodes(count, **values)
        row0 += count
        report(progress, "read nodes", row0, total)
    if FEAT_COLUMN in columns and writer.feat_dim is None:
        writer.feat_dim = dim or 0
    writer.has_label = writer.has_label or LABEL_COLUMN in columns
    writer.masks |= set(columns) & set(MASK_NAMES)
    writer.num_node_rows = total
    return total


def _spill_folder(folder: Path, writer: SpillWriter, rows: int, progress) -> SpilledGraph:
    meta = parquet_graph.read_meta(folder / parquet_graph.META_FILE)
    edges_path = folder / parquet_graph.EDGES_FILE
    lo, hi = _spill_parquet_edges(edges_path, writer, rows, progress)
    nodes_path = folder / parquet_graph.NODES_FILE
    node_rows = _spill_nodes(nodes_path, writer, _node_rows(rows), progress) if nodes_path.exists() else None
    if meta.num_nodes is not None:
        num_nodes, why = meta.num_nodes, f"{parquet_graph.META_FILE} num_nodes"
    elif node_rows is not None:
        num_nodes, why = node_rows, f"{parquet_graph.NODES_FILE} rows"
    else:
        check_nonempty(1, writer.num_edges, str(edges_path))
        num_nodes, why = hi + 1, "max id + 1"
    _check_node_rows(node_rows, num_nodes, nodes_path, why, writer)
    name = sanitize_name(meta.name) if meta.name else sanitize_name(folder.resolve().name)
    return _finish(writer, name=name, source=str(folder), num_nodes=num_nodes, num_classes=meta.num_classes,
                   id_range=(lo, hi), id_where=(f"{edges_path}: column 'src'", f"{edges_path}: column 'dst'"),
                   label_where=f"{nodes_path}: column 'label'")


def _node_rows(edge_rows: int) -> int:
    # an edge row is 16 bytes in a batch; a node row may be a few KiB of features
    return max(256, edge_rows // 64)


def _check_node_rows(node_rows: int | None, num_nodes: int, nodes_path: Path, why: str,
                     writer: SpillWriter) -> None:
    if node_rows is not None and node_rows != num_nodes:
        present = [c for c in (FEAT_COLUMN if writer.feat_dim is not None else None,
                               LABEL_COLUMN if writer.has_label else None, *sorted(writer.masks)) if c]
        column = f": column '{present[0]}'" if present else ""
        raise InputError(f"{nodes_path}{column} has {node_rows} rows but the graph "
                         f"has {num_nodes} nodes ({why})")


# ---------------------------------------------------------------- edge list


def _spill_edge_list(path: Path, writer: SpillWriter, rows: int, progress) -> SpilledGraph:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    layout = edgelist.sniff(path)
    lo, hi = 0, -1
    try:
        for src, dst in edgelist.edge_chunks(path, layout, rows, progress):
            writer.add_edges(src, dst)
            if src.size:
                lo = min(lo, int(src.min()), int(dst.min()))
                hi = max(hi, int(src.max()), int(dst.max()))
    except (ValueError, OverflowError) as exc:
        raise edgelist.parse_error(path, layout, exc) from None
    nodes_path = path.parent / parquet_graph.NODES_FILE
    node_rows = _spill_nodes(nodes_path, writer, _node_rows(rows), progress) if nodes_path.exists() else None
    if node_rows is not None:
        num_nodes = node_rows
    else:
        check_nonempty(1, writer.num_edges, str(path))
        num_nodes = hi + 1
    return _finish(writer, name=sanitize_name(path.stem), source=str(path), num_nodes=num_nodes,
                   num_classes=None, id_range=(lo, hi), id_where=(str(path), str(path)),
                   label_where=f"{nodes_path}: column 'label'",
                   row_labels=(edgelist.row_label(path, layout, "src"), edgelist.row_label(path, layout, "dst")))


# ---------------------------------------------------------------- DGL file


def _spill_dgl(path: Path, writer: SpillWriter, limit: int | None) -> SpilledGraph:
    if limit is not None and path.is_file():
        need = path.stat().st_size * DGL_BYTES_PER_FILE_BYTE
        if need > limit:
            raise InputError(
                f"{path}: DGL loads a saved graph whole, which needs about {need / 2**20:.0f} MiB here, "
                f"more than --memory-budget leaves ({limit / 2**20:.0f} MiB); convert it to a Parquet "
                "graph folder (edges.parquet, nodes.parquet), which is read in batches")
    graph = dglfile.load_dgl_file(path)
    writer.add_edges(graph.src, graph.dst)
    writer.add_nodes(graph.num_nodes, feat=graph.feat, label=graph.label, masks=graph.masks, target=graph.target)
    return writer.finish(name=graph.name, source=graph.source, num_nodes=graph.num_nodes,
                         num_classes=graph.num_classes)


# ---------------------------------------------------------------- whole-input checks


def _finish(writer: SpillWriter, *, name: str, source: str, num_nodes: int, num_classes: int | None,
            id_range: tuple[int, int], id_where: tuple[str, str], label_where: str,
            row_labels: tuple[Callable | None, Callable | None] = (None, None)) -> SpilledGraph:
    check_nonempty(num_nodes, writer.num_edges, source)
    graph = writer.finish(name=name, source=source, num_nodes=num_nodes, num_classes=num_classes)
    lo, hi = id_range
    if lo < 0 or hi >= num_nodes:
        for column, where, label in zip(("src", "dst"), id_where, row_labels):
            _find_bad_ids(graph, column, where, label)
    if graph.has_label:
        graph.num_classes = _check_spilled_labels(graph, num_classes, label_where)
    return graph


def _find_bad_ids(graph: SpilledGraph, column: str, where: str, row_label) -> None:
    index = 1 if column == "src" else 2
    for batch in graph.edges(1 << 22):
        check_node_ids(batch[index], graph.num_nodes, where, row0=batch[0], row_label=row_label)


def _check_spilled_labels(graph: SpilledGraph, num_classes: int | None, where: str) -> int | None:
    lo, hi = 0, -1
    for _start, label in graph.column("label"):
        if label.size:
            lo, hi = min(lo, int(label.min())), max(hi, int(label.max()))
    num_classes = num_classes or (hi + 1 if hi >= 0 else None)  # None: no labelled node, a valid graph
    if lo < -1 or (num_classes is not None and hi >= num_classes):
        for start, label in graph.column("label"):
            try:
                check_labels(label, num_classes, where)
            except InputError as err:
                raise InputError(_shift_row(str(err), start)) from None
    return num_classes


def _shift_row(message: str, start: int) -> str:
    """check_labels numbers rows from its chunk's start; make the row absolute."""
    import re

    return re.sub(r" row (\d+):", lambda m: f" row {int(m.group(1)) + start}:", message, count=1)
