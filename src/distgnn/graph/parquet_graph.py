"""The Parquet graph folder: edges.parquet, optional nodes.parquet and meta.json.

- edges.parquet: integer columns `src`, `dst` (one row per directed edge).
- nodes.parquet: one row per node, in node-id order; optional columns `feat`
  (fixed_size_list<float32>[D]; a plain list column is accepted when every row
  has the same length), `label` (integer, -1 or null for unlabeled) and boolean
  `train_mask`, `val_mask`, `test_mask`.
- meta.json: optional `name`, `num_classes`, `num_nodes`.

Files are read one row group at a time into preallocated NumPy arrays: peak
memory is the result plus one row group, the arrays are writable (Arrow's are
not), and progress can be reported per row group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distgnn.errors import InputError
from distgnn.graph.data import MASK_NAMES, GraphData
from distgnn.graph.progress import report
from distgnn.graph.validate import (
    check_finite,
    check_labels,
    check_node_ids,
    check_nonempty,
    first_true,
    infer_num_classes,
    sanitize_name,
)

EDGES_FILE = "edges.parquet"
NODES_FILE = "nodes.parquet"
META_FILE = "meta.json"
LABEL_COLUMN = "label"
TARGET_COLUMN = "target"
FEAT_COLUMN = "feat"


@dataclass(kw_only=True)
class Meta:
    """The optional meta.json of a graph folder."""

    name: str | None = None
    num_classes: int | None = None
    num_nodes: int | None = None


@dataclass(kw_only=True)
class NodeColumns:
    """What nodes.parquet holds, already converted to NumPy."""

    path: Path
    num_rows: int
    feat: np.ndarray | None = None
    label: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    target: np.ndarray | None = None
    first_column: str = ""
    """Name of a column present, for messages about the row count."""


def open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable Parquet file ({reason})") from None


def read_row_group(pf: pq.ParquetFile, path: Path, group: int, columns: list[str]) -> pa.Table:
    try:
        return pf.read_row_group(group, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: row group {group}: cannot read ({reason})") from None


def read_meta(path: Path) -> Meta:
    if not path.exists():
        return Meta()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"{path}: 'name' must be a string")
    # num_classes 0 says what an absent one says: no classes (an unlabelled graph).
    return Meta(name=name, num_classes=_positive(raw, "num_classes", path, zero_ok=True) or None,
                num_nodes=_positive(raw, "num_nodes", path))


def _positive(raw: dict, key: str, path: Path, zero_ok: bool = False) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
        what = "a non-negative" if zero_ok else "a positive"
        raise InputError(f"{path}: '{key}' must be {what} integer, got {value!r}")
    return value


def _column_type(pf: pq.ParquetFile, path: Path, column: str) -> pa.DataType | None:
    schema = pf.schema_arrow
    index = schema.get_field_index(column)
    return None if index < 0 else schema.field(index).type


def require_integer(pf: pq.ParquetFile, path: Path, column: str) -> None:
    kind = _column_type(pf, path, column)
    if kind is None:
        raise InputError(f"{path}: missing column '{column}'")
    if not pa.types.is_integer(kind):
        raise InputError(f"{path}: column '{column}' must be an integer type, got {kind}")


def int_chunk(chunk: pa.Array, where: str, row0: int) -> np.ndarray:
    if chunk.null_count:
        row = first_true(pc.is_null(chunk).to_numpy(zero_copy_only=False))
        raise InputError(f"{where} row {row0 + row}: value is null")
    values = chunk.to_numpy(zero_copy_only=False)
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        row = first_true(values > np.iinfo(np.int64).max)
        raise InputError(f"{where} row {row0 + row}: value {values[row]} does not fit int64")
    return values


def read_edges(path: Path, *, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """src, dst as int64 arrays; types and nulls checked, id range not yet."""
    pf = open_parquet(path)
    for column in ("src", "dst"):
        require_integer(pf, path, column)
    total = pf.metadata.num_rows
    out = {"src": np.empty(total, np.int64), "dst": np.empty(total, np.int64)}
    row0 = 0
    for group in range(pf.num_row_groups):
        table = read_row_group(pf, path, group, ["src", "dst"])
        for column, target in out.items():
            at = row0
            for chunk in table.column(column).chunks:
                target[at:at + len(chunk)] = int_chunk(chunk, f"{path}: column '{column}'", at)
                at += len(chunk)
        row0 += table.num_rows
        report(progress, "read edges", row0, total)
    return out["src"], out["dst"]


def feat_dim_of_type(kind: pa.DataType, path: Path) -> int | None:
    """D for a fixed-size list, None for a variable list (taken from row 0)."""
    if pa.types.is_fixed_size_list(kind):
        value_type, dim = kind.value_type, kind.list_size
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        value_type, dim = kind.value_type, None
    else:
        raise InputError(f"{path}: column 'feat' must be a list of floats, got {kind}")
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise InputError(f"{path}: column 'feat' must be a list of floats, got {kind}")
    if dim == 0:
        raise InputError(f"{path}: column 'feat' has 0 features per row")
    return dim


def feat_chunk(chunk: pa.Array, dim: int | None, where: str, row0: int) -> np.ndarray:
    if chunk.null_count:
        row = first_true(pc.is_null(chunk).to_numpy(zero_copy_only=False))
        raise InputError(f"{where} row {row0 + row}: feature list is null")
    if not pa.types.is_fixed_size_list(chunk.type):
        lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
        if dim is None:
            dim = int(lengths[0]) if len(lengths) else 0
            if dim == 0:
                raise InputError(f"{where} row {row0}: feature list is empty")
        if (lengths != dim).any():
            row = first_true(lengths != dim)
            raise InputError(f"{where} row {row0 + row}: feature list has {lengths[row]} "
                             f"values, expected {dim} (ragged lists)")
    # flatten() honours the chunk's offset, unlike .values
    values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), -1)
    check_finite(values, where, row0=row0)
    return values


def target_chunk(chunk: pa.Array, where: str, row0: int) -> np.ndarray:
    """float32 regression targets; null or NaN mean 'no target', infinity is an error."""
    values = pc.fill_null(chunk.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(np.isinf(values))
    if bad.size:
        raise InputError(f"{where} row {row0 + int(bad[0])}: target {values[bad[0]]} is not finite (NaN means no target)")
    big = np.flatnonzero(np.abs(values) > np.finfo(np.float32).max)
    if big.size:
        raise InputError(f"{where} row {row0 + int(big[0])}: target {values[big[0]]} does not fit float32")
    return values.astype(np.float32)


def bool_chunk(chunk: pa.Array) -> np.ndarray:
    # a null mask entry means "not in this split"
    return pc.fill_null(chunk, False).to_numpy(zero_copy_only=False)


def node_columns(pf: pq.ParquetFile, path: Path) -> tuple[list[str], int | None]:
    """The known columns nodes.parquet has, type-checked, and the feature dim if fixed."""
    columns: list[str] = []
    dim = None
    feat_type = _column_type(pf, path, FEAT_COLUMN)
    if feat_type is not None:
        dim = feat_dim_of_type(feat_type, path)
        columns.append(FEAT_COLUMN)
    label_type = _column_type(pf, path, LABEL_COLUMN)
    if label_type is not None:
        if not pa.types.is_integer(label_type):
            raise InputError(f"{path}: column 'label' must be an integer type, got {label_type}")
        columns.append(LABEL_COLUMN)
    target_type = _column_type(pf, path, TARGET_COLUMN)
    if target_type is not None:
        if not pa.types.is_floating(target_type):
            raise InputError(f"{path}: column 'target' must be a float type (NaN: no target), got {target_type}")
        columns.append(TARGET_COLUMN)
    for mask in MASK_NAMES:
        kind = _column_type(pf, path, mask)
        if kind is not None:
            if not pa.types.is_boolean(kind):
                raise InputError(f"{path}: column '{mask}' must be bool, got {kind}")
            columns.append(mask)
    return columns, dim


def _store_chunk(nodes: NodeColumns, name: str, chunk: pa.Array, at: int,
                 dim: int | None) -> None:
    """Convert one chunk of column `name` into the preallocated node arrays."""
    if len(chunk) == 0:
        return
    where = f"{nodes.path}: column '{name}'"
    if name == FEAT_COLUMN:
        block = feat_chunk(chunk, dim, where, at)
        if nodes.feat is None:
            nodes.feat = np.empty((nodes.num_rows, block.shape[1]), np.float32)
        nodes.feat[at:at + len(chunk)] = block
    elif name == LABEL_COLUMN:
        nodes.label[at:at + len(chunk)] = int_chunk(pc.fill_null(chunk, -1), where, at)
    elif name == TARGET_COLUMN:
        nodes.target[at:at + len(chunk)] = target_chunk(chunk, where, at)
    else:
        nodes.masks[name][at:at + len(chunk)] = bool_chunk(chunk)


def read_nodes(path: Path, *, progress=None) -> NodeColumns:
    pf = open_parquet(path)
    total = pf.metadata.num_rows
    columns, dim = node_columns(pf, path)
    nodes = NodeColumns(path=path, num_rows=total, first_column=columns[0] if columns else "")
    if LABEL_COLUMN in columns:
        nodes.label = np.empty(total, np.int64)
    if TARGET_COLUMN in columns:
        nodes.target = np.empty(total, np.float32)
    for mask in set(columns) & set(MASK_NAMES):
        nodes.masks[mask] = np.empty(total, np.bool_)
    row0 = 0
    for group in range(pf.num_row_groups if columns else 0):
        table = read_row_group(pf, path, group, columns)
        for name in columns:
            at = row0
            for chunk in table.column(name).chunks:
                _store_chunk(nodes, name, chunk, at, dim)
                # a plain list column's width is known after its first chunk
                dim = nodes.feat.shape[1] if name == FEAT_COLUMN else dim
                at += len(chunk)
        row0 += table.num_rows
        report(progress, "read nodes", row0, total)
    if FEAT_COLUMN in columns and nodes.feat is None:
        nodes.feat = np.empty((0, dim or 0), np.float32)
    return nodes


def max_id_plus_one(src: np.ndarray, dst: np.ndarray, where: str) -> int:
    """Node count implied by the edges (negative ids are rejected later)."""
    check_nonempty(1, src.shape[0], where)
    return int(max(src.max(), dst.max())) + 1


def check_node_rows(nodes: NodeColumns | None, num_nodes: int, nodes_path: Path,
                    why: str) -> None:
    """nodes.parquet must have exactly one row per node."""
    if nodes is not None and nodes.num_rows != num_nodes:
        column = f": column '{nodes.first_column}'" if nodes.first_column else ""
        raise InputError(f"{nodes_path}{column} has {nodes.num_rows} rows but the graph "
                         f"has {num_nodes} nodes ({why})")


def build_graph(*, name: str, source: str, src: np.ndarray, dst: np.ndarray,
                num_nodes: int, nodes: NodeColumns | None, num_classes: int | None,
                id_where: tuple[str, str], row_labels=(None, None)) -> GraphData:
    """Range-check edges against num_nodes and assemble the GraphData."""
    check_nonempty(num_nodes, src.shape[0], source)
    check_node_ids(src, num_nodes, id_where[0], row_label=row_labels[0])
    check_node_ids(dst, num_nodes, id_where[1], row_label=row_labels[1])
    label = nodes.label if nodes else None
    if label is not None:
        where = f"{nodes.path}: column 'label'"
        # No labelled node (all -1) is a valid graph, for tasks that need no labels.
        num_classes = num_classes or infer_num_classes(label)
        check_labels(label, num_classes, where)
    return GraphData(name=name, num_nodes=num_nodes, src=src, dst=dst,
                     feat=nodes.feat if nodes else None, label=label, target=nodes.target if nodes else None,
                     masks=dict(nodes.masks) if nodes else {},
                     num_classes=num_classes, source=source)


def load_parquet_folder(folder: Path, *, progress=None) -> GraphData:
    meta = read_meta(folder / META_FILE)
    edges_path = folder / EDGES_FILE
    src, dst = read_edges(edges_path, progress=progress)
    nodes_path = folder / NODES_FILE
    nodes = read_nodes(nodes_path, progress=progress) if nodes_path.exists() else None
    if meta.num_nodes is not None:
        num_nodes, why = meta.num_nodes, f"{META_FILE} num_nodes"
    elif nodes is not None:
        num_nodes, why = nodes.num_rows, f"{NODES_FILE} rows"
    else:
        num_nodes, why = max_id_plus_one(src, dst, str(edges_path)), "max id + 1"
    check_node_rows(nodes, num_nodes, nodes_path, why)
    name = sanitize_name(meta.name) if meta.name else sanitize_name(folder.resolve().name)
    return build_graph(name=name, source=str(folder), src=src, dst=dst, num_nodes=num_nodes,
                        nodes=nodes, num_classes=meta.num_classes,
                        id_where=(f"{edges_path}: column 'src'", f"{edges_path}: column 'dst'"))
