"""Files written by `dgl.save_graphs` (`*.dgl`, `*.bin`): the first graph is used.

Node data is looked up under the names DGL datasets commonly use (`feat` or
`features`, `label` or `labels`, `train_mask`/`val_mask`/`test_mask`); other
keys are ignored. DGL is imported only here and only when such a file is read:
importing it costs seconds that other inputs should not pay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distgnn.errors import InputError
from distgnn.graph.data import MASK_NAMES, GraphData
from distgnn.graph.parquet_graph import NodeColumns, build_graph
from distgnn.graph.progress import report
from distgnn.graph.validate import check_finite, sanitize_name

SUFFIXES = (".dgl", ".bin")
FEAT_KEYS = ("feat", "features", "feature", "x")
LABEL_KEYS = ("label", "labels", "y")


def read_dgl_graph(path: Path):
    """The first DGLGraph in the file; one-line InputError for anything else."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    import dgl  # noqa: PLC0415 - see module docstring
    from dgl import DGLError  # noqa: PLC0415

    try:
        graphs, _ = dgl.load_graphs(str(path), [0])
    except (DGLError, OSError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a file written by dgl.save_graphs "
                         f"({reason[:120]})") from None
    if not graphs:
        raise InputError(f"{path}: the file holds no graph")
    graph = graphs[0]
    if len(graph.ntypes) != 1 or len(graph.canonical_etypes) != 1:
        raise InputError(f"{path}: heterogeneous graph ({len(graph.ntypes)} node types, "
                         f"{len(graph.canonical_etypes)} edge types); only homogeneous "
                         "graphs are supported")
    return graph


def first_key(ndata, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in ndata), None)


def _features(tensor, where: str) -> np.ndarray:
    feat = tensor.numpy()
    if feat.ndim == 1:
        feat = feat[:, None]
    if feat.ndim != 2 or not (np.issubdtype(feat.dtype, np.floating)
                              or np.issubdtype(feat.dtype, np.integer)):
        raise InputError(f"{where}: must be a [N, D] numeric tensor, got {feat.dtype} "
                         f"with shape {feat.shape}")
    feat = np.ascontiguousarray(feat, dtype=np.float32)
    check_finite(feat, where)
    return feat


def _labels(tensor, where: str) -> np.ndarray:
    label = tensor.numpy()
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
        raise InputError(f"{where}: must be a 1-D integer tensor, got {label.dtype} "
                         f"with shape {label.shape}")
    return label.astype(np.int64, copy=False)


def _mask(tensor, where: str) -> np.ndarray:
    mask = tensor.numpy()
    if mask.ndim != 1 or not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise InputError(f"{where}: must be a 1-D bool or integer tensor, got {mask.dtype} "
                         f"with shape {mask.shape}")
    return mask.astype(np.bool_, copy=False) if mask.dtype == np.bool_ else mask != 0


def _targets(tensor, where: str) -> np.ndarray:
    import pyarrow as pa

    from distgnn.graph.parquet_graph import target_chunk

    values = tensor.numpy()
    if values.ndim != 1 or values.dtype.kind != "f":
        raise InputError(f"{where}: regression targets must be a 1-D float tensor, got {values.dtype} "
                         f"with shape {values.shape}")
    return target_chunk(pa.array(values), where, 0)


def load_dgl_file(path: Path, *, progress=None) -> GraphData:
    report(progress, "load dgl", 0, 1)
    graph = read_dgl_graph(path)
    src, dst = (t.numpy().astype(np.int64, copy=False) for t in graph.edges())
    num_nodes = int(graph.num_nodes())
    nodes = NodeColumns(path=path, num_rows=num_nodes)
    key = first_key(graph.ndata, FEAT_KEYS)
    if key is not None:
        nodes.feat = _features(graph.ndata[key], f"{path}: ndata '{key}'")
    key = first_key(graph.ndata, LABEL_KEYS)
    if key is not None:
        nodes.label = _labels(graph.ndata[key], f"{path}: ndata '{key}'")
    for name in MASK_NAMES:
        if name in graph.ndata:
            nodes.masks[name] = _mask(graph.ndata[name], f"{path}: ndata '{name}'")
    if "target" in graph.ndata:
        nodes.target = _targets(graph.ndata["target"], f"{path}: ndata 'target'")
    report(progress, "load dgl", 1, 1)
    return build_graph(name=sanitize_name(path.stem), source=str(path), src=src, dst=dst,
                       num_nodes=num_nodes, nodes=nodes, num_classes=None,
                       id_where=(f"{path}: src", f"{path}: dst"))
