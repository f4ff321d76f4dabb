"""Checks shared by every graph reader; each failure is one-line InputError.

Readers know where an array came from (a file and a column, or an edge-list
line), so every check takes a `where` text that the message starts with.
Checks are whole-array NumPy operations: the common, valid case costs a few
passes over memory and the position of the first bad row is only computed
once something is known to be wrong.
"""

from __future__ import annotations

import re

import numpy as np

from distgnn.errors import InputError
from distgnn.graph.data import MASK_NAMES, GraphData

_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def sanitize_name(raw: str) -> str:
    """Map any text to a graph name DGL accepts (letters, digits, '_' and '-')."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", raw.strip())
    return name or "graph"


def first_true(flags: np.ndarray) -> int:
    """Index of the first True in a bool array known to contain one."""
    return int(np.argmax(flags))


def check_node_ids(ids: np.ndarray, num_nodes: int, where: str, *, row0: int = 0,
                   row_label=None) -> None:
    """Every id in [0, num_nodes); otherwise name the first bad row.

    `row_label(row) -> str` lets edge-list readers report a line number instead
    of a row index.
    """
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < num_nodes:
        return
    bad = (ids < 0) | (ids >= num_nodes)
    row = row0 + first_true(bad)
    value = int(ids[row - row0])
    at = row_label(row) if row_label else f"row {row}"
    if value < 0:
        raise InputError(f"{where} {at}: node id {value} is negative")
    raise InputError(f"{where} {at}: node id {value} is out of range "
                     f"(the graph has {num_nodes} nodes, ids 0..{num_nodes - 1})")


def check_finite(feat: np.ndarray, where: str, *, row0: int = 0) -> None:
    """No NaN or inf anywhere in a [n, D] feature block."""
    finite = np.isfinite(feat)
    if finite.all():
        return
    row = first_true(~finite.reshape(feat.shape[0], -1).all(axis=1))
    raise InputError(f"{where} row {row0 + row}: feature is NaN or infinite")


def check_length(arr: np.ndarray, num_nodes: int, where: str, why: str) -> None:
    """A per-node array must have one row per node."""
    if arr.shape[0] != num_nodes:
        raise InputError(f"{where}: has {arr.shape[0]} rows but the graph has "
                         f"{num_nodes} nodes ({why})")


def check_labels(label: np.ndarray, num_classes: int | None, where: str) -> None:
    """Labels are -1 (unlabeled) or a class in [0, num_classes)."""
    if label.size == 0:
        return
    lo, hi = int(label.min()), int(label.max())
    if lo >= -1 and (num_classes is None or hi < num_classes):
        return
    limit = np.iinfo(np.int64).max if num_classes is None else num_classes
    row = first_true((label < -1) | (label >= limit))
    value = int(label[row])
    if value < -1:
        raise InputError(f"{where} row {row}: label {value} is invalid "
                         "(use -1 for unlabeled nodes)")
    raise InputError(f"{where} row {row}: label {value} is not below "
                     f"num_classes={num_classes}")


def check_nonempty(num_nodes: int, num_edges: int, where: str) -> None:
    if num_nodes <= 0:
        raise InputError(f"{where}: the graph is empty (0 nodes)")
    if num_edges <= 0:
        raise InputError(f"{where}: the graph has no edges")


def infer_num_classes(label: np.ndarray | None) -> int | None:
    if label is None or label.size == 0:
        return None
    top = int(label.max())
    return top + 1 if top >= 0 else None


def validate_graph(g: GraphData, *, deep: bool = False) -> GraphData:
    """Check the invariants GraphData promises; returns g for chaining.

    Readers already check values with exact positions; `deep=True` repeats the
    value checks (id range, finite features, label range) for graphs built in
    code, e.g. by tests or other tools.
    """
    where = g.source or g.name
    if not _NAME_OK.match(g.name):
        raise InputError(f"{where}: graph name {g.name!r} may only contain "
                         "letters, digits, '_' and '-'")
    check_nonempty(g.num_nodes, g.num_edges, where)
    for column, arr in (("src", g.src), ("dst", g.dst)):
        if arr.dtype != np.int64 or arr.ndim != 1:
            raise InputError(f"{where}: column '{column}' must be int64 [E], "
                             f"got {arr.dtype} with shape {arr.shape}")
    if g.src.shape != g.dst.shape:
        raise InputError(f"{where}: src has {g.src.shape[0]} edges but dst has "
                         f"{g.dst.shape[0]}")
    if g.feat is not None:
        if g.feat.dtype != np.float32 or g.feat.ndim != 2:
            raise InputError(f"{where}: column 'feat' must be float32 [N, D], "
                             f"got {g.feat.dtype} with shape {g.feat.shape}")
        check_length(g.feat, g.num_nodes, f"{where}: column 'feat'", "node count")
    if g.label is not None:
        if g.label.dtype != np.int64 or g.label.ndim != 1:
            raise InputError(f"{where}: column 'label' must be int64 [N], "
                             f"got {g.label.dtype} with shape {g.label.shape}")
        check_length(g.label, g.num_nodes, f"{where}: column 'label'", "node count")
    for name, mask in g.masks.items():
        if name not in MASK_NAMES:
            raise InputError(f"{where}: unknown mask {name!r} "
                             f"(known: {', '.join(MASK_NAMES)})")
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise InputError(f"{where}: column '{name}' must be bool [N], "
                             f"got {mask.dtype} with shape {mask.shape}")
        check_length(mask, g.num_nodes, f"{where}: column '{name}'", "node count")
    if deep:
        check_node_ids(g.src, g.num_nodes, f"{where}: column 'src'")
        check_node_ids(g.dst, g.num_nodes, f"{where}: column 'dst'")
        if g.feat is not None:
            check_finite(g.feat, f"{where}: column 'feat'")
        if g.label is not None:
            check_labels(g.label, g.num_classes, f"{where}: column 'label'")
    return g
